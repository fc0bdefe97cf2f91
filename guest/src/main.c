#define _GNU_SOURCE
/* Entry point: PID 1 in the initramfs, or the host test mode serving a unix socket. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: microagent-agent --listen-unix PATH [--secrets-dir DIR] [--debug]\n"
          "       microagent-agent --version\n"
          "As PID 1 (in the initramfs) it takes no arguments and reads microagent.* keys from\n"
          "/proc/cmdline. See docs/protocol.md.\n");
}

int main(int argc, char **argv) {
  if (getpid() == 1) ma_init_main();
  const char *listen = NULL, *secrets = NULL;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--listen-unix") && i + 1 < argc) listen = argv[++i];
    else if (!strcmp(argv[i], "--secrets-dir") && i + 1 < argc) secrets = argv[++i];
    else if (!strcmp(argv[i], "--debug")) ma_debug = 1;
    else if (!strcmp(argv[i], "--version")) {
      printf("microagent-agent %s (protocol 1)\n", MA_AGENT_VERSION);
      return 0;
    } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      usage(stdout);
      return 0;
    } else {
      usage(stderr);
      return 2;
    }
  }
  if (!listen) {
    usage(stderr);
    return 2;
  }
  char default_secrets[4096];
  if (!secrets) {
    /* Beside the socket, never the host's /run/secrets. */
    snprintf(default_secrets, sizeof default_secrets, "%s.secrets", listen);
    secrets = default_secrets;
  }
  ma_serve_config cfg = {.channel = MA_CH_UNIX, .unix_path = listen, .secrets_dir = secrets};
  uint32_t grace = 0;
  ma_serve(&cfg, &grace);
  ma_log("shut down");
  return 0;
}
