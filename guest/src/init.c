/* PID 1 in the initramfs: modules, root switch, mounts, hostname, network, disks, then the
 * channel server, then a clean power-off. Anything fatal powers the VM off with a console line
 * instead of returning (PID 1 exiting would panic the kernel). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent.h"

#define MAX_NETS 8

typedef struct {
  char root[128];
  char rootfstype[32];
  int ro;
  char hostname[65];
  char ip[64];
  char gateway[64];
  char dns[256];
  char routes[512]; /* microagent.routes=DST/N@GW,...: extra routes on eth0 */
  char hosts[2048];
  char disks[1024];
  char channel[128];
  char nets[MAX_NETS][64]; /* microagent.netN=MAC,ADDRESS/PREFIX: a NIC on a named network */
  int all_modules;         /* microagent.modules=all: load every module, whatever the boot uses */
  unsigned model_port;     /* microagent.model=PORT: forward guest 127.0.0.1:PORT to the host's model */
  char brokers[128];       /* microagent.brokers=PORT,...: guest 127.0.0.1:PORT to broker endpoint N */
} boot_config;

static boot_config bc;

static void power_off(int action) __attribute__((noreturn));

/* Powers the machine off. Without ACPI (QEMU microvm with acpi=off, Firecracker) the kernel has no
 * way to do that and would only halt, so a reset is used instead: these VMMs run with -no-reboot or
 * treat a guest reset as its end. A reboot request is always a reset. */
static void machine_off(int action) {
  struct stat st;
  int acpi = stat("/sys/firmware/acpi", &st) == 0;
  if (action == 1 || !acpi) reboot(RB_AUTOBOOT);
  else reboot(RB_POWER_OFF);
}

void ma_fatal(const char *fmt, ...) {
  char msg[768];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  ma_log("FATAL: %s", msg);
  if (getpid() != 1) exit(1);
  ma_log("powering off");
  sync();
  machine_off(0);
  for (;;) pause(); /* reboot() failed: never return, never exit */
}

static void try_mount(const char *src, const char *dst, const char *type, unsigned long flags,
                      const char *data) {
  mkdir(dst, 0755);
  if (mount(src, dst, type, flags, data) < 0 && errno != EBUSY)
    ma_log("mount %s on %s: %s", type ? type : src, dst, strerror(errno));
}

static void setup_console(void) {
  int fd = open("/dev/console", O_RDWR | O_NOCTTY);
  if (fd < 0) return;
  for (int i = 0; i < 3; i++)
    if (fd != i) dup2(fd, i);
  if (fd > 2) close(fd);
}

/* The guest's uptime as /proc/uptime prints it ("1.23"); the host reads the boot's phases from the
 * console lines that carry it. */
static const char *uptime(char *buf, size_t cap) {
  snprintf(buf, cap, "?");
  int fd = open("/proc/uptime", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return buf;
  ssize_t n = read(fd, buf, cap - 1);
  close(fd);
  buf[n > 0 ? n : 0] = 0;
  buf[strcspn(buf, " \n")] = 0;
  return buf;
}

/* ---------- kernel modules ---------- */

/* The parameters the kernel command line gives a module ("virtio_mmio.device=..." and so on), as
 * modprobe would pass them: finit_module() does not look at the command line itself. '-' and '_'
 * are the same in module names. */
static void module_params(const char *module, char *out, size_t cap) {
  out[0] = 0;
  int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  static char buf[8192];
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return;
  buf[n] = 0;
  size_t ml = strlen(module), used = 0;
  for (char *tok = strtok(buf, " \t\n"); tok; tok = strtok(NULL, " \t\n")) {
    if (!strcmp(tok, "--")) break; /* the rest belongs to init */
    size_t i = 0;
    for (; i < ml && tok[i]; i++) {
      char a = module[i] == '-' ? '_' : module[i], b = tok[i] == '-' ? '_' : tok[i];
      if (a != b) break;
    }
    if (i != ml || tok[ml] != '.' || !tok[ml + 1]) continue;
    int w = snprintf(out + used, cap - used, "%s%s", used ? " " : "", tok + ml + 1);
    if (w < 0 || (size_t)w >= cap - used) {
      ma_log("module %s: parameters too long, some dropped", module);
      out[used] = 0;
      return;
    }
    used += (size_t)w;
  }
}

static int load_module(const char *file) {
  char path[600];
  snprintf(path, sizeof path, "/lib/modules/%s", file);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    ma_log("module %s: %s", file, strerror(errno));
    return -1;
  }
  char name[256];
  snprintf(name, sizeof name, "%s", file);
  name[strcspn(name, ".")] = 0;
  static char params[4096];
  module_params(name, params, sizeof params);
  size_t nl = strlen(file);
  int compressed = (nl > 3 && (!strcmp(file + nl - 3, ".xz") || !strcmp(file + nl - 3, ".gz"))) ||
                   (nl > 4 && !strcmp(file + nl - 4, ".zst"));
  long r = syscall(SYS_finit_module, fd, params, compressed ? 4 /* MODULE_INIT_COMPRESSED_FILE */ : 0);
  if (r < 0 && errno == ENOSYS && !compressed) {
    /* Old kernels: hand the image over in memory instead. */
    struct stat st;
    void *buf = NULL;
    if (fstat(fd, &st) == 0 && (buf = malloc((size_t)st.st_size)) &&
        read(fd, buf, (size_t)st.st_size) == st.st_size)
      r = syscall(SYS_init_module, buf, (unsigned long)st.st_size, params);
    free(buf);
  }
  if (r < 0 && errno != EEXIST) ma_log("module %s: %s", file, strerror(errno));
  else ma_dbg("module %s loaded%s%s", file, params[0] ? " with " : "", params);
  close(fd);
  return 0;
}

/* Loads the modules of /lib/modules/load.list (dependencies first) whose class is `wanted`. A line is
 * "FILE.ko" (class "boot": what the root disk and the channel need) or "FILE.ko CLASS" ("net": only
 * when the guest has a NIC to configure; "vsock": only for a vsock channel), so a guest never pays
 * for drivers it does not use. NULL loads every class. */
static void load_modules(const char *wanted) {
  FILE *f = fopen("/lib/modules/load.list", "re");
  if (!f) return;
  char line[512];
  while (fgets(line, sizeof line, f)) {
    line[strcspn(line, "\r\n#")] = 0;
    char *file = line;
    while (*file == ' ' || *file == '\t') file++;
    if (!*file) continue;
    char *cls = file + strcspn(file, " \t");
    if (*cls) {
      *cls++ = 0;
      while (*cls == ' ' || *cls == '\t') cls++;
      cls[strcspn(cls, " \t")] = 0;
    }
    if (wanted && strcmp(*cls ? cls : "boot", wanted) != 0) continue;
    load_module(file);
  }
  fclose(f);
}

/* ---------- kernel command line ---------- */

static void set_str(char *dst, size_t cap, const char *v) { snprintf(dst, cap, "%s", v); }

static void parse_cmdline(void) {
  set_str(bc.root, sizeof bc.root, "/dev/vda");
  set_str(bc.rootfstype, sizeof bc.rootfstype, "ext4");
  set_str(bc.channel, sizeof bc.channel, "virtio:microagent.agent");
  int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  static char buf[8192];
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return;
  buf[n] = 0;
  for (char *tok = strtok(buf, " \t\n"); tok; tok = strtok(NULL, " \t\n")) {
    if (strncmp(tok, "microagent.", 11) != 0) continue;
    char *key = tok + 11, *eq = strchr(key, '=');
    if (!eq) continue;
    *eq = 0;
    const char *v = eq + 1;
    if (!strcmp(key, "root")) set_str(bc.root, sizeof bc.root, v);
    else if (!strcmp(key, "rootfstype")) set_str(bc.rootfstype, sizeof bc.rootfstype, v);
    else if (!strcmp(key, "ro")) bc.ro = !strcmp(v, "1");
    else if (!strcmp(key, "hostname")) set_str(bc.hostname, sizeof bc.hostname, v);
    else if (!strcmp(key, "ip")) set_str(bc.ip, sizeof bc.ip, v);
    else if (!strcmp(key, "gateway")) set_str(bc.gateway, sizeof bc.gateway, v);
    else if (!strcmp(key, "dns")) set_str(bc.dns, sizeof bc.dns, v);
    else if (!strcmp(key, "routes")) set_str(bc.routes, sizeof bc.routes, v);
    else if (!strcmp(key, "hosts")) set_str(bc.hosts, sizeof bc.hosts, v);
    else if (!strcmp(key, "disks")) set_str(bc.disks, sizeof bc.disks, v);
    else if (!strcmp(key, "channel")) set_str(bc.channel, sizeof bc.channel, v);
    else if (!strncmp(key, "net", 3) && key[3] >= '1' && key[3] < '1' + MAX_NETS && !key[4])
      set_str(bc.nets[key[3] - '1'], sizeof bc.nets[0], v);
    else if (!strcmp(key, "modules")) bc.all_modules = !strcmp(v, "all");
    else if (!strcmp(key, "model")) bc.model_port = (unsigned)strtoul(v, NULL, 10) & 0xffffu;
    else if (!strcmp(key, "brokers")) set_str(bc.brokers, sizeof bc.brokers, v);
    else if (!strcmp(key, "debug")) ma_debug = !strcmp(v, "1");
  }
}

/* ---------- switching root ---------- */

/* Deletes the initramfs contents (it stays in RAM otherwise), never crossing into other mounts. */
static void remove_tree(int dirfd, dev_t dev) {
  DIR *d = fdopendir(dirfd);
  if (!d) {
    close(dirfd);
    return;
  }
  struct dirent *e;
  while ((e = readdir(d))) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    struct stat st;
    if (fstatat(dirfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || st.st_dev != dev) continue;
    if (S_ISDIR(st.st_mode)) {
      int sub = openat(dirfd, e->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
      if (sub >= 0) remove_tree(sub, dev);
      unlinkat(dirfd, e->d_name, AT_REMOVEDIR);
    } else {
      unlinkat(dirfd, e->d_name, 0);
    }
  }
  closedir(d);
}

static void switch_root(void) {
  const char *nr = "/newroot";
  mkdir(nr, 0755);
  if (ma_wait_for_path(bc.root, 10000) < 0)
    ma_fatal("root device %s did not appear within 10 s (is virtio_blk in /lib/modules/load.list?)", bc.root);
  unsigned long flags = bc.ro ? MS_RDONLY : 0;
  if (mount(bc.root, nr, bc.rootfstype, flags, NULL) < 0)
    ma_fatal("mount %s (%s) on %s: %s", bc.root, bc.rootfstype, nr, strerror(errno));
  static const char *moves[] = {"/dev", "/proc", "/sys"};
  for (int i = 0; i < 3; i++) {
    char dst[64];
    snprintf(dst, sizeof dst, "%s%s", nr, moves[i]);
    mkdir(dst, 0755);
    if (mount(moves[i], dst, NULL, MS_MOVE, NULL) < 0) {
      ma_log("move %s: %s", moves[i], strerror(errno));
      umount2(moves[i], MNT_DETACH);
    }
  }
  struct stat rst;
  if (stat("/", &rst) == 0) {
    int fd = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) remove_tree(fd, rst.st_dev);
  }
  if (chdir(nr) < 0) ma_fatal("chdir %s: %s", nr, strerror(errno));
  if (mount(".", "/", NULL, MS_MOVE, NULL) < 0) ma_fatal("move root: %s", strerror(errno));
  if (chroot(".") < 0) ma_fatal("chroot: %s", strerror(errno));
  if (chdir("/") < 0) ma_fatal("chdir /: %s", strerror(errno));
}

static void setup_mounts(void) {
  struct stat st;
  /* A /dev, /proc or /sys that could not be moved (missing directory) is mounted afresh. */
  if (stat("/proc/self", &st) < 0) try_mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
  if (stat("/sys/class", &st) < 0) try_mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
  if (stat("/dev/null", &st) < 0) try_mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
  try_mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "gid=5,mode=0620,ptmxmode=0666");
  try_mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
  try_mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755");
  /* /tmp is a tmpfs unless the image made it something else (a symlink, say). */
  if (lstat("/tmp", &st) < 0 || S_ISDIR(st.st_mode))
    try_mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
  static const char *links[][2] = {{"/proc/self/fd", "/dev/fd"},
                                   {"/proc/self/fd/0", "/dev/stdin"},
                                   {"/proc/self/fd/1", "/dev/stdout"},
                                   {"/proc/self/fd/2", "/dev/stderr"}};
  for (int i = 0; i < 4; i++) symlink(links[i][0], links[i][1]);
}

/* ---------- files in /etc that may live on a read-only root ---------- */

static void write_etc(const char *path, const char *content) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd >= 0 && ma_write_all(fd, content, strlen(content)) == 0) {
    close(fd);
    return;
  }
  int e = errno;
  if (fd >= 0) close(fd);
  /* Read-only root: keep the file in /run and bind it over the image's (if it has one). */
  char alt[256];
  const char *base = strrchr(path, '/') + 1;
  mkdir("/run/microagent", 0755);
  snprintf(alt, sizeof alt, "/run/microagent/%s", base);
  fd = open(alt, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0 || ma_write_all(fd, content, strlen(content)) < 0) {
    ma_log("cannot write %s: %s", path, strerror(e));
    if (fd >= 0) close(fd);
    return;
  }
  close(fd);
  if (mount(alt, path, NULL, MS_BIND, NULL) < 0) ma_log("cannot write %s: %s", path, strerror(e));
}

/* ---------- network ---------- */


/* NICs on named networks: an address and the subnet route, no gateway (outbound traffic stays on eth0). */
static void setup_named_nets(int s) {
  for (int i = 0; i < MAX_NETS; i++) {
    if (!bc.nets[i][0]) continue;
    char spec[64], ifname[IFNAMSIZ];
    snprintf(spec, sizeof spec, "%s", bc.nets[i]);
    char *comma = strchr(spec, ',');
    struct in_addr addr;
    in_addr_t mask;
    /* Only a MAC: a warm-start template's stand-in, left down for a restore's FRESHEN to configure. */
    if (!comma) continue;
    if (ma_parse_addr(comma + 1, &addr, &mask) < 0) {
      ma_log("bad microagent.net%d=%s", i + 1, bc.nets[i]);
      continue;
    }
    *comma = 0;
    if (ma_find_by_mac(spec, ifname, sizeof ifname, 5000) < 0) {
      ma_log("no interface with MAC %s for microagent.net%d", spec, i + 1);
      continue;
    }
    if (ma_if_addr(s, ifname, SIOCSIFADDR, addr.s_addr) < 0 || ma_if_addr(s, ifname, SIOCSIFNETMASK, mask) < 0 ||
        ma_if_up(s, ifname) < 0)
      ma_log("%s %s: %s", ifname, comma + 1, strerror(errno));
    else
      ma_dbg("%s is %s", ifname, comma + 1);
  }
}

/* Adds a route on eth0 to DST/N through GW (a host route when N is 32, the default one when 0). */
static void add_route(int s, const char *spec) {
  if (ma_route_spec(s, "eth0", spec) < 0) {
    if (errno == EINVAL) ma_log("bad route %s (DST/N@GW)", spec);
    else ma_log("route %s: %s", spec, strerror(errno));
  }
}

static void setup_network(void) {
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) {
    ma_log("socket: %s", strerror(errno));
    return;
  }
  if (ma_if_up(s, "lo") < 0) ma_log("loopback up: %s", strerror(errno));
  if (bc.ip[0]) {
    char ip[64];
    snprintf(ip, sizeof ip, "%s", bc.ip);
    int prefix = 24;
    char *slash = strchr(ip, '/');
    if (slash) {
      *slash = 0;
      prefix = atoi(slash + 1);
    }
    struct in_addr addr, gw;
    if (inet_pton(AF_INET, ip, &addr) != 1 || prefix < 0 || prefix > 32) {
      ma_log("bad microagent.ip=%s", bc.ip);
    } else if (ma_wait_for_path("/sys/class/net/eth0", 5000) < 0) {
      ma_log("eth0 did not appear (is virtio_net in /lib/modules/load.list?)");
    } else {
      in_addr_t mask = prefix == 0 ? 0 : htonl(0xFFFFFFFFu << (32 - prefix));
      if (ma_if_addr(s, "eth0", SIOCSIFADDR, addr.s_addr) < 0 ||
          ma_if_addr(s, "eth0", SIOCSIFNETMASK, mask) < 0 || ma_if_up(s, "eth0") < 0)
        ma_log("eth0 %s: %s", bc.ip, strerror(errno));
      if (bc.gateway[0]) {
        if (inet_pton(AF_INET, bc.gateway, &gw) != 1) {
          ma_log("bad microagent.gateway=%s", bc.gateway);
        } else {
          if (ma_default_route(s, "eth0", gw) < 0)
            ma_log("default route via %s: %s", bc.gateway, strerror(errno));
        }
      }
      if (bc.routes[0]) {
        char list[sizeof bc.routes];
        snprintf(list, sizeof list, "%s", bc.routes);
        char *save = NULL;
        for (char *r = strtok_r(list, ",", &save); r; r = strtok_r(NULL, ",", &save)) add_route(s, r);
      }
    }
  }
  setup_named_nets(s);
  close(s);
  if (bc.dns[0]) {
    char out[1024] = "", list[256];
    snprintf(list, sizeof list, "%s", bc.dns);
    for (char *d = strtok(list, ","); d; d = strtok(NULL, ",")) {
      size_t l = strlen(out);
      snprintf(out + l, sizeof out - l, "nameserver %s\n", d);
    }
    write_etc("/etc/resolv.conf", out);
  }
  if (bc.hosts[0]) {
    static char out[4096];
    char list[2048];
    snprintf(out, sizeof out, "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if (bc.hostname[0] && bc.ip[0]) {
      char ip[64];
      snprintf(ip, sizeof ip, "%s", bc.ip);
      ip[strcspn(ip, "/")] = 0;
      size_t l = strlen(out);
      snprintf(out + l, sizeof out - l, "%s\t%s\n", ip, bc.hostname);
    }
    snprintf(list, sizeof list, "%s", bc.hosts);
    for (char *h = strtok(list, ","); h; h = strtok(NULL, ",")) {
      char *eq = strchr(h, '=');
      if (!eq) continue;
      *eq = 0;
      size_t l = strlen(out);
      snprintf(out + l, sizeof out - l, "%s\t%s\n", eq + 1, h);
    }
    write_etc("/etc/hosts", out);
  }
}

/* ---------- extra disks ---------- */

/* A declared disk that fails to mount must stop the boot: the workload would write to root. */
static void mount_disks(void) {
  if (!bc.disks[0]) return;
  char why[256];
  if (ma_mount_disks(bc.disks, 0, why, sizeof why) < 0) ma_fatal("%s", why);
}

/* ---------- power off ---------- */

static int reap_all(int ms) {
  int64_t until = ma_now_ms() + ms;
  for (;;) {
    pid_t p;
    while ((p = waitpid(-1, NULL, WNOHANG)) > 0) {
    }
    if (p < 0 && errno == ECHILD) return 0;
    if (ma_now_ms() >= until) return -1;
    ma_sleep_ms(10);
  }
}

static void power_off(int action) {
  ma_log("stopping processes");
  kill(-1, SIGTERM);
  if (reap_all(2000) < 0) {
    kill(-1, SIGKILL);
    reap_all(1000);
  }
  sync();
  ma_unmount_disks();
  mount(NULL, "/", NULL, MS_REMOUNT | MS_RDONLY, NULL);
  sync();
  ma_log(action == 1 ? "rebooting" : "powering off");
  machine_off(action);
  ma_fatal("reboot: %s", strerror(errno));
}

void ma_init_main(void) {
  mkdir("/dev", 0755);
  mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
  setup_console();
  try_mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
  try_mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
  reboot(RB_DISABLE_CAD); /* Ctrl-Alt-Del becomes SIGINT: a clean shutdown */
  parse_cmdline();
  char up0[32];
  ma_log("starting at %ss uptime (microagent-agent %s)", uptime(up0, sizeof up0), MA_AGENT_VERSION);
  /* Everything is loaded before switch_root, which frees the initramfs. */
  if (bc.all_modules) {
    load_modules(NULL);
  } else {
    load_modules("boot");
    if (!strncmp(bc.channel, "vsock:", 6)) load_modules("vsock");
    int nics = bc.ip[0] != 0;
    for (int i = 0; i < MAX_NETS; i++) nics |= bc.nets[i][0] != 0;
    if (nics) load_modules("net");
  }
  switch_root();
  setup_mounts();
  if (bc.hostname[0] && sethostname(bc.hostname, strlen(bc.hostname)) < 0)
    ma_log("sethostname: %s", strerror(errno));
  setup_network();
  mount_disks();

  ma_serve_config sc = {.pid1 = 1, .secrets_dir = "/run/secrets", .secrets_tmpfs = 1};
  if (!strncmp(bc.channel, "virtio:", 7)) {
    sc.channel = MA_CH_VIRTIO;
    sc.virtio_name = bc.channel + 7;
  } else if (!strncmp(bc.channel, "vsock:", 6)) {
    sc.channel = MA_CH_VSOCK;
    sc.vsock_port = (unsigned)strtoul(bc.channel + 6, NULL, 10);
  } else {
    ma_fatal("unknown microagent.channel=%s (virtio:NAME or vsock:PORT)", bc.channel);
  }
  if (bc.model_port) ma_modelfwd_start("microagent.model", bc.model_port);
  if (bc.brokers[0]) ma_broker_forwarders_start(bc.brokers);
  char up[32];
  ma_log("ready at %ss uptime, serving %s", uptime(up, sizeof up), bc.channel);
  uint32_t grace = 0;
  int action = ma_serve(&sc, &grace);
  power_off(action);
}
