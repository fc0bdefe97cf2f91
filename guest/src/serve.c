/* The channel server: one poll() loop multiplexing connections, execs and file transfers.
 * Memory is bounded by construction: a fixed input buffer per connection (one maximal frame), a
 * send buffer we stop filling above MA_OUT_HIGH, and per-stream credit in both directions. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/random.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"
#include "proto.h"

/* From <linux/vm_sockets.h>, which musl's headers do not ship. */
#ifndef AF_VSOCK
#define AF_VSOCK 40
#endif
struct ma_sockaddr_vm {
  sa_family_t svm_family;
  unsigned short svm_reserved1;
  unsigned int svm_port;
  unsigned int svm_cid;
  unsigned char svm_zero[sizeof(struct sockaddr) - sizeof(sa_family_t) - sizeof(unsigned short) -
                         2 * sizeof(unsigned int)];
};
#define MA_VMADDR_CID_ANY 0xFFFFFFFFu

#define MA_AGENT_WINDOW (256u * 1024u)  /* credit we grant per stream */
#define MA_DEFAULT_PEER_WINDOW (256u * 1024u)
#define MA_OUT_HIGH (2u * 1024u * 1024u) /* stop producing above this much unsent output */
#define MA_READ_CHUNK (1024u * 1024u) /* = MA_MAX_PAYLOAD: one read, one frame */
#define MA_MAX_STREAMS 256
#define MA_MAX_CONNS 32
#define MA_LINGER_MS 5000
/* A stream that has already sent this much and then returns a small read is in bulk mode: its
 * pipes are left alone for a millisecond so the next frame carries more (fewer, larger frames;
 * interactive output, which never gets here, is not delayed). */
#define MA_BULK_BYTES (1024u * 1024u)
#define MA_SMALL_READ (16u * 1024u)
#define MA_DEFAULT_GRACE_MS 1000
#define MA_IN_CAP (MA_HEADER_SIZE + MA_MAX_PAYLOAD + 65536u)

static const char *const DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

enum { S_EXEC = 1, S_PUT, S_GET };

typedef struct stream stream;
typedef struct conn conn;

struct stream {
  stream *next;
  conn *c;
  uint32_t id;
  int kind;
  int dead;
  int64_t out_credit; /* bytes of STDOUT/STDERR/FILE_DATA we may still send */
  uint32_t in_credit; /* bytes of STDIN/FILE_DATA the host may still send */
  uint32_t grant_pending;
  /* exec */
  pid_t pid;
  int exited, wstatus;
  int in_fd, out_fd, err_fd, pty;
  uint8_t *inbuf;
  size_t inlen;
  int stdin_eof, stdin_broken;
  int has_out_limit, has_err_limit;
  uint64_t out_limit, err_limit, out_bytes, err_bytes, out_sent, err_sent;
  int64_t start_us, deadline_ms, kill_at_ms, linger_until_ms;
  int64_t hold_until_ms; /* bulk output: let the pipe fill a little before the next read */
  uint32_t grace_ms;
  int timed_out, cancelled;
  /* files */
  int fd;
  char *path, *tmp_path;
  uint32_t mode, uid, gid;
  int has_uid, has_gid;
};

struct conn {
  conn *next;
  int fd;
  int is_port; /* virtio-serial: one long-lived fd, one host session at a time */
  int dead, closing;
  int discarding; /* port after a framing error: drop input until the host hangs up */
  int handshaken;
  uint32_t peer_window;
  uint32_t max_seen;
  uint8_t *in;
  size_t in_len;
  ma_reader reader; /* framing state: oversized payload bytes still to discard */
  uint8_t *out;
  size_t out_off, out_len, out_cap;
  stream *streams;
  int nstreams;
};

static const ma_serve_config *cfg;
static conn *conns;
static int nconns;
static int listen_fd = -1, sig_fd = -1;
static int shutdown_requested, shutdown_action;
static uint32_t shutdown_grace = 5000;
static int64_t port_retry_at;
static conn *port_conn;
static int port_idle; /* the host is not connected: poll() would spin on POLLHUP */
static int secrets_mounted;

/* ---------- output ---------- */

static int out_reserve(conn *c, size_t n) {
  if (c->out_off > 0 && c->out_off == c->out_len) c->out_off = c->out_len = 0;
  if (c->out_cap - c->out_len >= n) return 0;
  if (c->out_off > 0) {
    memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
    c->out_len -= c->out_off;
    c->out_off = 0;
    if (c->out_cap - c->out_len >= n) return 0;
  }
  size_t cap = c->out_cap ? c->out_cap : 65536;
  while (cap - c->out_len < n) cap *= 2;
  uint8_t *p = realloc(c->out, cap);
  if (!p) return -1;
  c->out = p;
  c->out_cap = cap;
  return 0;
}

static size_t out_pending(const conn *c) { return c->out_len - c->out_off; }

static void send_frame(conn *c, uint8_t type, uint32_t stream, const void *payload, size_t len) {
  if (c->dead || out_reserve(c, MA_HEADER_SIZE + len) < 0) return;
  ma_write_header(c->out + c->out_len, type, stream, (uint32_t)len);
  if (len) memcpy(c->out + c->out_len + MA_HEADER_SIZE, payload, len);
  c->out_len += MA_HEADER_SIZE + len;
}

static void send_tlv(conn *c, uint8_t type, uint32_t stream, const ma_writer *w) {
  send_frame(c, type, stream, w->p, w->len);
}

static const char *errno_code(int e) {
  switch (e) {
  case ENOENT: case ESRCH: return "not_found";
  case EACCES: case EPERM: case EROFS: return "permission_denied";
  case EEXIST: return "exists";
  case ENOSPC: case EDQUOT: return "no_space";
  case EINVAL: case EISDIR: case ENOTDIR: case ENAMETOOLONG: case ELOOP: return "invalid_argument";
  case ENOSYS: case EOPNOTSUPP: return "unsupported";
  default: return "io_error";
  }
}

static void send_error(conn *c, uint32_t stream, const char *code, const char *message, int err_no) {
  uint8_t buf[1200];
  ma_writer w;
  ma_writer_init(&w, buf, sizeof buf);
  ma_put_str(&w, 1, code);
  if (message) {
    size_t n = strlen(message);
    ma_put_bytes(&w, 2, message, n > 1000 ? 1000 : n);
  }
  if (err_no) ma_put_u32(&w, 3, (uint32_t)err_no);
  send_tlv(c, MA_ERROR, stream, &w);
}

static void send_errno(conn *c, uint32_t stream, const char *what, int e) {
  char msg[600];
  snprintf(msg, sizeof msg, "%s: %s", what, strerror(e));
  send_error(c, stream, errno_code(e), msg, e);
}

static void send_window(conn *c, uint32_t stream, uint32_t n) {
  uint8_t buf[16];
  ma_writer w;
  ma_writer_init(&w, buf, sizeof buf);
  ma_put_u32(&w, 1, n);
  send_tlv(c, MA_WINDOW, stream, &w);
}

static void send_empty(conn *c, uint8_t type, uint32_t stream) { send_frame(c, type, stream, NULL, 0); }

static void port_session_end(conn *c);

static void flush_conn(conn *c) {
  while (!c->dead && out_pending(c) > 0) {
    ssize_t w = write(c->fd, c->out + c->out_off, out_pending(c));
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) return;
      ma_dbg("connection write failed: %s", strerror(errno));
      if (c->is_port && (errno == EPIPE || errno == ENODEV)) {
        ma_dbg("virtio port: host gone while writing");
        port_session_end(c);
      }
      else c->dead = 1;
      return;
    }
    c->out_off += (size_t)w;
  }
  if (!c->dead && c->closing && out_pending(c) == 0) {
    if (c->is_port) {
      ma_dbg("virtio port: discarding input until the host hangs up");
      c->closing = 0;
      c->discarding = 1;
    } else {
      c->dead = 1;
    }
  }
}

/* ---------- streams ---------- */

static stream *find_stream(conn *c, uint32_t id) {
  for (stream *s = c->streams; s; s = s->next)
    if (s->id == id && !s->dead) return s;
  return NULL;
}

static stream *new_stream(conn *c, uint32_t id, int kind) {
  stream *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  s->c = c;
  s->id = id;
  s->kind = kind;
  s->out_credit = c->peer_window;
  s->in_credit = MA_AGENT_WINDOW;
  s->in_fd = s->out_fd = s->err_fd = s->fd = -1;
  s->pid = -1;
  s->next = c->streams;
  c->streams = s;
  c->nstreams++;
  return s;
}

static void close_fd(int *fd) {
  if (*fd >= 0) close(*fd);
  *fd = -1;
}

static void close_exec_fds(stream *s) {
  if (s->pty) {
    /* one master fd serves stdin and stdout */
    if (s->out_fd >= 0) close(s->out_fd);
    s->in_fd = s->out_fd = -1;
  } else {
    close_fd(&s->in_fd);
    close_fd(&s->out_fd);
  }
  close_fd(&s->err_fd);
}

/* Ends a stream without a final message of its own (errors and lost connections). */
static void abort_stream(stream *s) {
  if (s->dead) return;
  if (s->kind == S_EXEC) {
    if (s->pid > 0 && !s->exited) kill(-s->pid, SIGKILL);
    close_exec_fds(s);
  } else if (s->kind == S_PUT) {
    close_fd(&s->fd);
    if (s->tmp_path) unlink(s->tmp_path);
  } else {
    close_fd(&s->fd);
  }
  s->dead = 1;
  s->c->nstreams--;
}

static void stream_error(stream *s, const char *code, const char *message) {
  send_error(s->c, s->id, code, message, 0);
  abort_stream(s);
}

static void free_stream(stream *s) {
  free(s->inbuf);
  free(s->path);
  free(s->tmp_path);
  free(s);
}

static void end_session(conn *c) {
  for (stream *s = c->streams; s; s = s->next) abort_stream(s);
  c->handshaken = 0;
  c->max_seen = 0;
}

/* ---------- exec ---------- */

typedef struct {
  uid_t uid;
  gid_t gid;
  gid_t groups[64];
  int ngroups;
  char name[256];
  char home[PATH_MAX];
  int known; /* found in /etc/passwd */
} user_info;

static int all_digits(const char *s) {
  if (!*s) return 0;
  for (; *s; s++)
    if (*s < '0' || *s > '9') return 0;
  return 1;
}

/* Splits a passwd/group line in place; returns the field count. */
static int split_colon(char *line, char **f, int max) {
  int n = 0;
  f[n++] = line;
  for (char *p = line; *p && n < max; p++)
    if (*p == ':') {
      *p = 0;
      f[n++] = p + 1;
    }
  char *nl = strchr(f[n - 1], '\n');
  if (nl) *nl = 0;
  return n;
}

static int lookup_group(const char *spec, gid_t *gid) {
  if (all_digits(spec)) {
    *gid = (gid_t)strtoul(spec, NULL, 10);
    return 0;
  }
  FILE *f = fopen("/etc/group", "re");
  if (!f) return -1;
  char line[4096];
  int found = -1;
  while (fgets(line, sizeof line, f)) {
    char *fl[4];
    if (split_colon(line, fl, 4) >= 3 && strcmp(fl[0], spec) == 0) {
      *gid = (gid_t)strtoul(fl[2], NULL, 10);
      found = 0;
      break;
    }
  }
  fclose(f);
  return found;
}

/* Resolves `name`, `uid`, `name:group` or `uid:gid` against the root's /etc/passwd and
 * /etc/group (not NSS: the guest has no NSS and the host test mode must behave the same). */
static int resolve_user(const char *spec, user_info *u, char *err, size_t errlen) {
  memset(u, 0, sizeof *u);
  char user[256], group[256] = "";
  snprintf(user, sizeof user, "%s", spec);
  char *colon = strchr(user, ':');
  if (colon) {
    *colon = 0;
    snprintf(group, sizeof group, "%s", colon + 1);
  }
  int numeric = all_digits(user);
  if (numeric) u->uid = (uid_t)strtoul(user, NULL, 10);
  FILE *f = fopen("/etc/passwd", "re");
  if (f) {
    char line[4096];
    while (fgets(line, sizeof line, f)) {
      char *fl[7];
      if (split_colon(line, fl, 7) < 7) continue;
      uid_t uid = (uid_t)strtoul(fl[2], NULL, 10);
      if (numeric ? uid == u->uid : strcmp(fl[0], user) == 0) {
        u->uid = uid;
        u->gid = (gid_t)strtoul(fl[3], NULL, 10);
        snprintf(u->name, sizeof u->name, "%s", fl[0]);
        snprintf(u->home, sizeof u->home, "%s", fl[5]);
        u->known = 1;
        break;
      }
    }
    fclose(f);
  }
  if (!u->known && !numeric) {
    snprintf(err, errlen, "unknown user %s (not in /etc/passwd)", user);
    return -1;
  }
  if (!u->known) {
    u->gid = 0; /* like OCI runtimes: a uid without an entry gets group 0 */
    snprintf(u->home, sizeof u->home, "/");
  }
  if (group[0] && lookup_group(group, &u->gid) < 0) {
    snprintf(err, errlen, "unknown group %s (not in /etc/group)", group);
    return -1;
  }
  u->groups[u->ngroups++] = u->gid;
  if (u->known) {
    FILE *g = fopen("/etc/group", "re");
    if (g) {
      char line[4096];
      while (fgets(line, sizeof line, g) && u->ngroups < 64) {
        char *fl[4];
        if (split_colon(line, fl, 4) < 4) continue;
        gid_t gid = (gid_t)strtoul(fl[2], NULL, 10);
        for (char *m = strtok(fl[3], ","); m; m = strtok(NULL, ","))
          if (strcmp(m, u->name) == 0 && gid != u->gid) {
            u->groups[u->ngroups++] = gid;
            break;
          }
      }
      fclose(g);
    }
  }
  return 0;
}

static int env_has(char **env, int n, const char *key) {
  size_t kl = strcspn(key, "=");
  for (int i = 0; i < n; i++)
    if (strncmp(env[i], key, kl) == 0 && env[i][kl] == '=') return i;
  return -1;
}

/* Child-side failure report: stage + errno through the CLOEXEC pipe, then exit 127. */
static void child_fail(int errfd, int stage, int e) {
  int msg[2] = {stage, e};
  ssize_t w = write(errfd, msg, sizeof msg);
  (void)w;
  _exit(127);
}

enum { ST_SETUP = 1, ST_PTY, ST_IDENTITY, ST_CHDIR, ST_EXEC };

static void child_exec(char **argv, char **envp, const char *path_env) {
  const char *file = argv[0];
  if (strchr(file, '/')) {
    execve(file, argv, envp);
    return;
  }
  int eacces = 0;
  const char *p = path_env;
  char buf[PATH_MAX];
  while (p) {
    const char *colon = strchr(p, ':');
    size_t dl = colon ? (size_t)(colon - p) : strlen(p);
    if (dl == 0) {
      snprintf(buf, sizeof buf, "%s", file);
    } else {
      snprintf(buf, sizeof buf, "%.*s/%s", (int)dl, p, file);
    }
    execve(buf, argv, envp);
    if (errno == EACCES) eacces = 1;
    else if (errno != ENOENT && errno != ENOTDIR) return;
    p = colon ? colon + 1 : NULL;
  }
  errno = eacces ? EACCES : ENOENT;
}

static void send_exit(stream *s, uint8_t status, uint32_t code, int sig, const char *error) {
  uint8_t buf[1200];
  ma_writer w;
  ma_writer_init(&w, buf, sizeof buf);
  ma_put_u8(&w, 1, status);
  ma_put_u32(&w, 2, code);
  if (sig > 0) ma_put_u32(&w, 3, (uint32_t)sig);
  if (s->has_out_limit && s->out_bytes > s->out_sent) ma_put_u8(&w, 4, 1);
  if (s->has_err_limit && s->err_bytes > s->err_sent) ma_put_u8(&w, 5, 1);
  ma_put_u64(&w, 6, (uint64_t)(ma_now_us() - s->start_us));
  if (error) {
    size_t n = strlen(error);
    ma_put_bytes(&w, 7, error, n > 1000 ? 1000 : n);
  }
  ma_put_u64(&w, 8, s->out_bytes);
  ma_put_u64(&w, 9, s->err_bytes);
  send_tlv(s->c, MA_EXIT, s->id, &w);
}

static void exec_start(conn *c, uint32_t id, const ma_exec *x) {
  stream *s = new_stream(c, id, S_EXEC);
  if (!s) {
    send_error(c, id, "io_error", "out of memory", ENOMEM);
    return;
  }
  s->start_us = ma_now_us();
  s->has_out_limit = x->has_stdout_limit;
  s->out_limit = x->stdout_limit;
  s->has_err_limit = x->has_stderr_limit;
  s->err_limit = x->stderr_limit;
  s->grace_ms = x->has_grace ? x->kill_grace_ms : MA_DEFAULT_GRACE_MS;
  s->pty = x->has_pty_rows;
  char err[512];
  user_info u;
  int have_user = x->user && x->user[0];
  if (have_user && resolve_user(x->user, &u, err, sizeof err) < 0) {
    send_exit(s, 3, 127, 0, err);
    abort_stream(s);
    return;
  }

  /* Environment: defaults, then the request's entries replace same-named ones. */
  int cap = (int)x->envc + 8, n = 0;
  char **envp = calloc((size_t)cap + 1, sizeof(char *));
  char home_kv[PATH_MAX + 8], user_kv[300], logname_kv[300], path_kv[256];
  if (!envp) {
    send_error(c, id, "io_error", "out of memory", ENOMEM);
    abort_stream(s);
    return;
  }
  const char *home = have_user ? u.home : (getenv("HOME") ? getenv("HOME") : "/");
  snprintf(path_kv, sizeof path_kv, "PATH=%s", DEFAULT_PATH);
  snprintf(home_kv, sizeof home_kv, "HOME=%s", home);
  envp[n++] = path_kv;
  envp[n++] = home_kv;
  if (have_user && u.known) {
    snprintf(user_kv, sizeof user_kv, "USER=%s", u.name);
    snprintf(logname_kv, sizeof logname_kv, "LOGNAME=%s", u.name);
    envp[n++] = user_kv;
    envp[n++] = logname_kv;
  }
  if (s->pty) envp[n++] = "TERM=xterm-256color";
  for (uint32_t i = 0; i < x->envc; i++) {
    int at = env_has(envp, n, x->env[i]);
    if (at >= 0) envp[at] = x->env[i];
    else envp[n++] = x->env[i];
  }
  envp[n] = NULL;
  const char *path_env = envp[env_has(envp, n, "PATH=")] + 5;
  const char *cwd = x->cwd && x->cwd[0] ? x->cwd : NULL;

  int in_p[2] = {-1, -1}, out_p[2] = {-1, -1}, err_p[2] = {-1, -1}, st_p[2] = {-1, -1};
  int master = -1;
  char slave_name[64] = "";
  int setup_errno = 0;
  const char *setup_what = "pipe";
  if (pipe2(st_p, O_CLOEXEC) < 0) setup_errno = errno;
  if (!setup_errno && s->pty) {
    setup_what = "openpty";
    unsigned ptn = 0;
    int unlock = 0;
    master = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (master < 0 || ioctl(master, TIOCSPTLCK, &unlock) < 0 || ioctl(master, TIOCGPTN, &ptn) < 0) {
      setup_errno = errno;
    } else {
      snprintf(slave_name, sizeof slave_name, "/dev/pts/%u", ptn);
      struct winsize ws = {.ws_row = x->pty_rows, .ws_col = x->pty_cols};
      ioctl(master, TIOCSWINSZ, &ws);
    }
  } else if (!setup_errno) {
    if ((x->stdin_open && pipe2(in_p, O_CLOEXEC) < 0) || pipe2(out_p, O_CLOEXEC) < 0 ||
        pipe2(err_p, O_CLOEXEC) < 0)
      setup_errno = errno;
  }
  pid_t pid = -1;
  if (!setup_errno) {
    setup_what = "fork";
    pid = fork();
    if (pid < 0) setup_errno = errno;
  }
  if (pid == 0) {
    sigset_t all;
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
    signal(SIGPIPE, SIG_DFL);
    if (setsid() < 0) child_fail(st_p[1], ST_SETUP, errno);
    if (s->pty) {
      int sl = open(slave_name, O_RDWR);
      if (sl < 0 || ioctl(sl, TIOCSCTTY, 0) < 0) child_fail(st_p[1], ST_PTY, errno);
      if (dup2(sl, 0) < 0 || dup2(sl, 1) < 0 || dup2(sl, 2) < 0) child_fail(st_p[1], ST_PTY, errno);
      if (sl > 2) close(sl);
    } else {
      int in = x->stdin_open ? in_p[0] : open("/dev/null", O_RDONLY);
      if (in < 0) child_fail(st_p[1], ST_SETUP, errno);
      if (dup2(in, 0) < 0 || dup2(out_p[1], 1) < 0 || dup2(err_p[1], 2) < 0)
        child_fail(st_p[1], ST_SETUP, errno);
    }
    if (have_user) {
      if (setgroups((size_t)u.ngroups, u.groups) < 0 || setgid(u.gid) < 0 || setuid(u.uid) < 0)
        child_fail(st_p[1], ST_IDENTITY, errno);
    }
    if (cwd) {
      if (chdir(cwd) < 0) child_fail(st_p[1], ST_CHDIR, errno);
    } else if (chdir(home) < 0 && chdir("/") < 0) {
      child_fail(st_p[1], ST_CHDIR, errno);
    }
    child_exec(x->argv, envp, path_env);
    child_fail(st_p[1], ST_EXEC, errno);
  }
  free(envp);
  close_fd(&in_p[0]);
  close_fd(&out_p[1]);
  close_fd(&err_p[1]);
  close_fd(&st_p[1]);
  if (setup_errno) {
    snprintf(err, sizeof err, "%s: %s", setup_what, strerror(setup_errno));
    close_fd(&in_p[1]);
    close_fd(&out_p[0]);
    close_fd(&err_p[0]);
    close_fd(&st_p[0]);
    close_fd(&master);
    send_exit(s, 3, 127, 0, err);
    abort_stream(s);
    return;
  }
  /* The child either execs (EOF on the status pipe) or reports why it could not. */
  int msg[2];
  ssize_t r;
  do r = read(st_p[0], msg, sizeof msg);
  while (r < 0 && errno == EINTR);
  close_fd(&st_p[0]);
  if (r == (ssize_t)sizeof msg) {
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    static const char *stages[] = {"", "setup", "pty", "setuid", "chdir", "execve"};
    const char *what = msg[0] >= 1 && msg[0] <= 5 ? stages[msg[0]] : "start";
    if (msg[0] == ST_EXEC) snprintf(err, sizeof err, "execve %s: %s", x->argv[0], strerror(msg[1]));
    else if (msg[0] == ST_CHDIR) snprintf(err, sizeof err, "chdir %s: %s", cwd ? cwd : home, strerror(msg[1]));
    else snprintf(err, sizeof err, "%s: %s", what, strerror(msg[1]));
    int code = (msg[0] == ST_EXEC && (msg[1] == EACCES || msg[1] == ENOEXEC)) ? 126 : 127;
    close_fd(&in_p[1]);
    close_fd(&out_p[0]);
    close_fd(&err_p[0]);
    close_fd(&master);
    send_exit(s, 3, (uint32_t)code, 0, err);
    abort_stream(s);
    return;
  }
  s->pid = pid;
  if (s->pty) {
    s->in_fd = s->out_fd = master;
    ma_set_nonblock(master);
  } else {
    s->in_fd = in_p[1];
    s->out_fd = out_p[0];
    s->err_fd = err_p[0];
    if (s->in_fd >= 0) ma_set_nonblock(s->in_fd);
    ma_set_nonblock(s->out_fd);
    ma_set_nonblock(s->err_fd);
    /* Bigger pipes mean fewer wake-ups on bulk output; failure is harmless. */
    fcntl(s->out_fd, F_SETPIPE_SZ, (int)MA_READ_CHUNK);
  }
  if (x->has_timeout && x->timeout_ms > 0) s->deadline_ms = ma_now_ms() + (int64_t)x->timeout_ms;
  uint8_t buf[16];
  ma_writer w;
  ma_writer_init(&w, buf, sizeof buf);
  ma_put_u32(&w, 1, (uint32_t)pid);
  send_tlv(c, MA_STARTED, id, &w);
}

static void exec_signal_group(stream *s, int sig) {
  if (s->pid > 0) kill(-s->pid, sig);
}

static void exec_stop(stream *s, int timed_out) {
  if (s->exited && !timed_out) return;
  if (timed_out) s->timed_out = 1;
  else s->cancelled = 1;
  if (s->kill_at_ms) return;
  /* A terminal session is hung up, as a closed terminal would be: interactive shells ignore TERM. */
  if (s->pty) exec_signal_group(s, SIGHUP);
  exec_signal_group(s, SIGTERM);
  s->kill_at_ms = ma_now_ms() + s->grace_ms;
  if (s->kill_at_ms == 0) s->kill_at_ms = 1;
}

/* Reads one chunk of a process's output into a frame (or drops it past the limit). */
static void exec_read(stream *s, int is_err) {
  int *fd = is_err ? &s->err_fd : &s->out_fd;
  uint64_t *bytes = is_err ? &s->err_bytes : &s->out_bytes;
  uint64_t *sent = is_err ? &s->err_sent : &s->out_sent;
  int has_limit = is_err ? s->has_err_limit : s->has_out_limit;
  uint64_t limit = is_err ? s->err_limit : s->out_limit;
  uint64_t room = has_limit ? (limit > *sent ? limit - *sent : 0) : UINT64_MAX;
  conn *c = s->c;
  if (s->cancelled || room == 0) {
    static uint8_t sink[65536];
    ssize_t r = read(*fd, sink, sizeof sink);
    if (r > 0) {
      *bytes += (uint64_t)r;
      s->linger_until_ms = 0;
    } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
      if (s->pty && s->out_fd == *fd) s->in_fd = -1;
      close_fd(fd);
    }
    return;
  }
  if (out_pending(c) >= MA_OUT_HIGH) return; /* other streams filled it this round */
  size_t n = MA_READ_CHUNK;
  if ((int64_t)n > s->out_credit) n = (size_t)s->out_credit;
  if ((uint64_t)n > room) n = (size_t)room;
  if (n == 0 || out_reserve(c, MA_HEADER_SIZE + n) < 0) return;
  ssize_t r = read(*fd, c->out + c->out_len + MA_HEADER_SIZE, n);
  /* Top the frame up with whatever else is already in the pipe: fewer, larger frames. */
  while (r > 0 && (size_t)r < n) {
    ssize_t more = read(*fd, c->out + c->out_len + MA_HEADER_SIZE + r, n - (size_t)r);
    if (more <= 0) break; /* EAGAIN, or EOF/error: seen again on the next poll */
    r += more;
  }
  if (r > 0) {
    ma_write_header(c->out + c->out_len, is_err ? MA_STDERR : MA_STDOUT, s->id, (uint32_t)r);
    c->out_len += MA_HEADER_SIZE + (size_t)r;
    *bytes += (uint64_t)r;
    *sent += (uint64_t)r;
    s->out_credit -= r;
    s->linger_until_ms = 0;
    if ((size_t)r < MA_SMALL_READ && s->out_bytes + s->err_bytes > MA_BULK_BYTES && !s->exited)
      s->hold_until_ms = ma_now_ms() + 1;
  } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
    /* EIO on a PTY master means every slave is closed: the terminal's EOF. */
    if (s->pty && s->out_fd == *fd) s->in_fd = -1;
    close_fd(fd);
  }
}

static void exec_grant(stream *s, int force) {
  if (s->grant_pending && (force || s->grant_pending >= MA_AGENT_WINDOW / 4 || s->inlen == 0)) {
    send_window(s->c, s->id, s->grant_pending);
    s->in_credit += s->grant_pending;
    s->grant_pending = 0;
  }
}

static void exec_write_stdin(stream *s) {
  while (s->inlen > 0 && s->in_fd >= 0) {
    ssize_t w = write(s->in_fd, s->inbuf, s->inlen);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) break;
      /* The process closed its stdin: drop what it will never read, keep the host unblocked. */
      s->stdin_broken = 1;
      s->grant_pending += (uint32_t)s->inlen;
      s->inlen = 0;
      if (!s->pty) close_fd(&s->in_fd);
      break;
    }
    memmove(s->inbuf, s->inbuf + w, s->inlen - (size_t)w);
    s->inlen -= (size_t)w;
    s->grant_pending += (uint32_t)w;
  }
  if (s->inlen == 0 && s->stdin_eof == 1 && s->in_fd >= 0) {
    if (s->pty) {
      /* A terminal has no half-close: send its EOF character instead. */
      uint8_t eof = 0x04;
      if (write(s->in_fd, &eof, 1) == 1) s->stdin_eof = 2;
    } else {
      close_fd(&s->in_fd);
      s->stdin_eof = 2;
    }
  }
  exec_grant(s, 0);
}

static void exec_stdin(stream *s, const uint8_t *p, uint32_t n) {
  if (n > s->in_credit) {
    stream_error(s, "flow_control", "stdin beyond the granted window");
    return;
  }
  s->in_credit -= n;
  if (s->stdin_eof || s->stdin_broken || s->in_fd < 0) {
    s->grant_pending += n;
    exec_grant(s, 0);
    return;
  }
  if (!s->inbuf) s->inbuf = malloc(MA_AGENT_WINDOW);
  if (!s->inbuf) {
    stream_error(s, "io_error", "out of memory");
    return;
  }
  memcpy(s->inbuf + s->inlen, p, n); /* fits: inlen + in_credit <= window */
  s->inlen += n;
  exec_write_stdin(s);
}

static int exec_can_read(stream *s, int is_err);

static void exec_maybe_finish(stream *s, int64_t now) {
  if (s->dead || !s->exited) return;
  if (s->out_fd >= 0 || s->err_fd >= 0) {
    /* Someone else (a background child) holds the pipes: wait while they stay busy. Time spent
     * waiting for the host's credit does not count. */
    if (!exec_can_read(s, 0) || !exec_can_read(s, 1)) s->linger_until_ms = 0;
    if (!s->linger_until_ms) s->linger_until_ms = now + MA_LINGER_MS;
    if (now < s->linger_until_ms) return;
  }
  close_exec_fds(s);
  int st = s->wstatus;
  if (s->timed_out) {
    send_exit(s, 2, 124, WIFSIGNALED(st) ? WTERMSIG(st) : 0, NULL);
  } else if (WIFSIGNALED(st)) {
    send_exit(s, 1, 128u + (uint32_t)WTERMSIG(st), WTERMSIG(st), NULL);
  } else {
    send_exit(s, 0, (uint32_t)WEXITSTATUS(st), 0, NULL);
  }
  s->dead = 1;
  s->c->nstreams--;
}

/* ---------- files and secrets ---------- */

static void put_start(conn *c, uint32_t id, const ma_file_put *f) {
  stream *s = new_stream(c, id, S_PUT);
  if (!s) {
    send_error(c, id, "io_error", "out of memory", ENOMEM);
    return;
  }
  static unsigned counter;
  size_t n = strlen(f->path) + 64;
  s->path = strdup(f->path);
  s->tmp_path = malloc(n);
  if (!s->path || !s->tmp_path) {
    stream_error(s, "io_error", "out of memory");
    return;
  }
  snprintf(s->tmp_path, n, "%s.ma-%d-%u", f->path, (int)getpid(), ++counter);
  s->mode = f->mode;
  s->uid = f->uid;
  s->gid = f->gid;
  s->has_uid = f->has_uid;
  s->has_gid = f->has_gid;
  s->fd = open(s->tmp_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (s->fd < 0) {
    int e = errno;
    free(s->tmp_path);
    s->tmp_path = NULL; /* nothing to remove */
    send_errno(c, id, f->path, e);
    abort_stream(s);
  }
}

static void put_data(stream *s, const uint8_t *p, uint32_t n) {
  if (n > s->in_credit) {
    stream_error(s, "flow_control", "file data beyond the granted window");
    return;
  }
  if (ma_write_all(s->fd, p, n) < 0) {
    int e = errno;
    send_errno(s->c, s->id, s->path, e);
    abort_stream(s);
    return;
  }
  /* Written synchronously, so the credit comes straight back. */
  if (n) send_window(s->c, s->id, n);
}

static void put_finish(stream *s) {
  int e = 0;
  const char *what = s->path;
  if ((s->has_uid || s->has_gid) &&
      fchown(s->fd, s->has_uid ? s->uid : (uid_t)-1, s->has_gid ? s->gid : (gid_t)-1) < 0)
    e = errno, what = "chown";
  /* after chown, which clears set-id bits */
  if (!e && fchmod(s->fd, s->mode) < 0) e = errno, what = "chmod";
  if (!e && fsync(s->fd) < 0 && errno != EINVAL) e = errno, what = "fsync";
  if (!e && close(s->fd) < 0) e = errno;
  s->fd = -1;
  if (!e && rename(s->tmp_path, s->path) < 0) e = errno, what = s->path;
  if (e) {
    char msg[600];
    snprintf(msg, sizeof msg, "%s", what);
    send_errno(s->c, s->id, msg, e);
    abort_stream(s);
    return;
  }
  send_empty(s->c, MA_OK, s->id);
  free(s->tmp_path);
  s->tmp_path = NULL;
  s->dead = 1;
  s->c->nstreams--;
}

static void get_start(conn *c, uint32_t id, const char *path) {
  stream *s = new_stream(c, id, S_GET);
  if (!s) {
    send_error(c, id, "io_error", "out of memory", ENOMEM);
    return;
  }
  struct stat st;
  s->fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK); /* a FIFO must not block us */
  if (s->fd < 0 || fstat(s->fd, &st) < 0) {
    send_errno(c, id, path, errno);
    abort_stream(s);
    return;
  }
  if (!S_ISREG(st.st_mode)) {
    send_errno(c, id, path, S_ISDIR(st.st_mode) ? EISDIR : EINVAL);
    abort_stream(s);
    return;
  }
  uint8_t buf[64];
  ma_writer w;
  ma_writer_init(&w, buf, sizeof buf);
  ma_put_u32(&w, 1, st.st_mode & 07777);
  ma_put_u64(&w, 2, (uint64_t)st.st_size);
  ma_put_u32(&w, 3, st.st_uid);
  ma_put_u32(&w, 4, st.st_gid);
  send_tlv(c, MA_FILE_INFO, id, &w);
}

static int get_can_pump(stream *s) {
  return s->kind == S_GET && !s->dead && s->out_credit > 0 && out_pending(s->c) < MA_OUT_HIGH;
}

static void get_pump(stream *s) {
  conn *c = s->c;
  size_t n = MA_READ_CHUNK;
  if ((int64_t)n > s->out_credit) n = (size_t)s->out_credit;
  if (out_reserve(c, MA_HEADER_SIZE + n) < 0) return;
  ssize_t r;
  do r = read(s->fd, c->out + c->out_len + MA_HEADER_SIZE, n);
  while (r < 0 && errno == EINTR);
  if (r < 0) {
    send_errno(c, s->id, "read", errno);
    abort_stream(s);
  } else if (r == 0) {
    send_empty(c, MA_EOF, s->id);
    close_fd(&s->fd);
    s->dead = 1;
    c->nstreams--;
  } else {
    ma_write_header(c->out + c->out_len, MA_FILE_DATA, s->id, (uint32_t)r);
    c->out_len += MA_HEADER_SIZE + (size_t)r;
    s->out_credit -= r;
  }
}

static int ensure_secrets_dir(int *err) {
  const char *dir = cfg->secrets_dir;
  if (mkdir(dir, 0700) < 0 && errno != EEXIST) return *err = errno, -1;
  if (cfg->secrets_tmpfs && !secrets_mounted) {
    /* Keep secrets off the disk: a tmpfs only root can enter. */
    if (mount("tmpfs", dir, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0700,size=16m") < 0 &&
        errno != EBUSY)
      return *err = errno, -1;
    secrets_mounted = 1;
  }
  chmod(dir, 0700);
  return 0;
}

/* Zeroes memory the compiler may not skip (the values must not linger in the agent's heap). */
static void wipe(volatile void *p, size_t n) {
  volatile uint8_t *b = p;
  while (n--) *b++ = 0;
}

/* Overwrites every file of the secrets directory with zeros in place (the tmpfs pages that held the
 * values are the ones overwritten, not freed with the values in them), then removes it. For a memory
 * snapshot: the captured memory must not hold a secret. */
static int purge_secrets(int *err) {
  DIR *d = opendir(cfg->secrets_dir);
  if (!d) return errno == ENOENT ? 0 : (*err = errno, -1);
  static const uint8_t zeros[4096];
  struct dirent *e;
  while ((e = readdir(d))) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", cfg->secrets_dir, e->d_name);
    int fd = open(path, O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd >= 0) {
      struct stat st;
      if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
        for (off_t off = 0; off < st.st_size;) {
          size_t n = (size_t)(st.st_size - off) < sizeof zeros ? (size_t)(st.st_size - off) : sizeof zeros;
          ssize_t w = pwrite(fd, zeros, n, off);
          if (w <= 0) break;
          off += w;
        }
        fsync(fd);
      }
      close(fd);
    }
    if (unlink(path) < 0 && errno != ENOENT) {
      *err = errno;
      closedir(d);
      return -1;
    }
  }
  closedir(d);
  return 0;
}

static void deliver_secrets(conn *c, uint32_t id, const ma_secrets *sec) {
  int e = 0;
  if (sec->purge && purge_secrets(&e) < 0) {
    send_errno(c, id, cfg->secrets_dir, e);
    return;
  }
  if (sec->count == 0) {
    send_empty(c, MA_OK, id);
    return;
  }
  if (ensure_secrets_dir(&e) < 0) {
    send_errno(c, id, cfg->secrets_dir, e);
    return;
  }
  for (uint32_t i = 0; i < sec->count; i++) {
    char path[PATH_MAX], tmp[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", cfg->secrets_dir, sec->items[i].name);
    snprintf(tmp, sizeof tmp, "%s/.%s.tmp", cfg->secrets_dir, sec->items[i].name);
    unlink(tmp);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0400);
    if (fd < 0 || ma_write_all(fd, sec->items[i].value, sec->items[i].value_len) < 0 ||
        fchmod(fd, 0400) < 0) {
      e = errno;
      if (fd >= 0) close(fd);
      unlink(tmp);
      send_errno(c, id, path, e);
      return;
    }
    close(fd);
    if (rename(tmp, path) < 0) {
      e = errno;
      unlink(tmp);
      send_errno(c, id, path, e);
      return;
    }
  }
  send_empty(c, MA_OK, id);
}

/* ---------- freshen ---------- */

/* From <linux/random.h>, which musl's headers do not ship. Both need CAP_SYS_ADMIN. */
#define MA_RNDADDENTROPY _IOW('R', 0x03, int[2])
#define MA_RNDRESEEDCRNG _IO('R', 0x07)

/* Mixes the host's bytes into the input pool, credited at 8 bits a byte, then reseeds the crng from
 * it at once: without the reseed, Linux would go on serving the snapshot's crng state (shared by every
 * restore of that snapshot) until its next scheduled reseed. */
static int rng_reseed(const uint8_t *p, uint32_t n) {
  struct {
    int entropy_count;
    int buf_size;
    uint8_t buf[MA_MAX_ENTROPY];
  } info;
  int fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) return -1;
  info.entropy_count = (int)(8 * n);
  info.buf_size = (int)n;
  memcpy(info.buf, p, n);
  int r = ioctl(fd, MA_RNDADDENTROPY, &info);
  int e = errno;
  wipe(&info, sizeof info);
  if (r == 0) {
    r = ioctl(fd, MA_RNDRESEEDCRNG);
    e = errno;
  }
  close(fd);
  errno = e;
  return r;
}

/* Replaces a small file of /etc where the image has one: a new file beside it, with its mode and
 * owner, renamed over it, so no reader sees it half written. A symlink, or a file bind-mounted over,
 * cannot be replaced that way and is rewritten in place. 1 written, 0 absent, -1 failed (errno). */
static int replace_etc_file(const char *path, const char *content) {
  struct stat st;
  if (lstat(path, &st) < 0) return errno == ENOENT ? 0 : -1;
  size_t n = strlen(content);
  int e;
  if (!S_ISLNK(st.st_mode)) {
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s.microagent-new", path);
    unlink(tmp);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) return -1;
    if (fchown(fd, st.st_uid, st.st_gid) < 0) ma_dbg("%s: keeping our owner: %s", tmp, strerror(errno));
    if (ma_write_all(fd, content, n) < 0 || fchmod(fd, st.st_mode & 07777) < 0 || fsync(fd) < 0) {
      e = errno;
      close(fd);
      unlink(tmp);
      errno = e;
      return -1;
    }
    close(fd);
    if (rename(tmp, path) == 0) return 1;
    e = errno;
    unlink(tmp);
    errno = e;
    if (e != EBUSY && e != EXDEV) return -1;
  }
  int fd = open(path, O_WRONLY | O_TRUNC | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) return errno == ENOENT ? 0 : -1; /* a dangling symlink: no file there */
  int r = ma_write_all(fd, content, n) < 0 || fsync(fd) < 0 ? -1 : 1;
  e = errno;
  close(fd);
  errno = e;
  return r;
}

/* A new machine-id: 128 bits from the (just reseeded) kernel RNG, shaped as a version 4 UUID the way
 * systemd makes them, written as 32 lowercase hex digits. */
static int new_machine_id(void) {
  uint8_t id[16];
  if (getrandom(id, sizeof id, GRND_NONBLOCK) != (ssize_t)sizeof id) return -1;
  id[6] = (uint8_t)((id[6] & 0x0f) | 0x40);
  id[8] = (uint8_t)((id[8] & 0x3f) | 0x80);
  char text[34];
  for (int i = 0; i < 16; i++) snprintf(text + 2 * i, 3, "%02x", id[i]);
  text[32] = '\n';
  text[33] = 0;
  int r = replace_etc_file("/etc/machine-id", text);
  int e = errno;
  wipe(id, sizeof id);
  wipe(text, sizeof text);
  errno = e;
  return r;
}

/* Records a step's outcome: r < 0 failed (errno), 0 nothing there to change, > 0 done. */
static void step_result(ma_ok *k, int step, int r) {
  k->has_outcome[step] = 1;
  if (r < 0) {
    k->outcome[step] = MA_OUT_FAILED;
    k->err_no[step] = (uint32_t)errno;
    k->has_errno[step] = 1;
  } else {
    k->outcome[step] = r == 0 ? MA_OUT_ABSENT : MA_OUT_DONE;
  }
}

static void step_skipped(ma_ok *k, int step) {
  k->has_outcome[step] = 1;
  k->outcome[step] = MA_OUT_SKIPPED;
}

static int set_hostname(const char *name) {
  if (sethostname(name, strlen(name)) < 0) return -1;
  /* The kernel's name is what answers; /etc/hostname follows where the image has one. */
  char line[MA_MAX_HOSTNAME + 2];
  snprintf(line, sizeof line, "%s\n", name);
  return replace_etc_file("/etc/hostname", line) < 0 ? -1 : 1;
}

/* Every step asked for is tried, whatever the others did; the OK says how each went. In host test
 * mode nothing of the host's (clock, RNG, hostname, /etc) is touched: the steps are reported skipped. */
static void freshen(conn *c, uint32_t id, const ma_freshen *f) {
  ma_ok k;
  memset(&k, 0, sizeof k);
  int host = !cfg->pid1;
  if (f->has_time) {
    struct timespec ts = {.tv_sec = (time_t)f->time_sec, .tv_nsec = (long)f->time_nsec};
    if (host) step_skipped(&k, MA_STEP_CLOCK);
    else step_result(&k, MA_STEP_CLOCK, clock_settime(CLOCK_REALTIME, &ts) < 0 ? -1 : 1);
  }
  if (f->entropy_len) {
    if (host) step_skipped(&k, MA_STEP_RNG);
    else step_result(&k, MA_STEP_RNG, rng_reseed(f->entropy, f->entropy_len) < 0 ? -1 : 1);
  }
  if (f->hostname) {
    if (host) step_skipped(&k, MA_STEP_HOSTNAME);
    else step_result(&k, MA_STEP_HOSTNAME, set_hostname(f->hostname));
  }
  if (f->machine_id) {
    /* After the reseed: the new id comes from this guest's own randomness. */
    if (host) step_skipped(&k, MA_STEP_MACHINE_ID);
    else step_result(&k, MA_STEP_MACHINE_ID, new_machine_id());
  }
  ma_dbg("freshen: outcomes clock %d rng %d hostname %d machine-id %d (-1 not asked)",
         k.has_outcome[0] ? k.outcome[0] : -1, k.has_outcome[1] ? k.outcome[1] : -1,
         k.has_outcome[2] ? k.outcome[2] : -1, k.has_outcome[3] ? k.outcome[3] : -1);
  uint8_t buf[128];
  ma_msg ok = {.type = MA_OK, .stream = id, .u.ok = k};
  long len = ma_encode(&ok, buf, sizeof buf);
  send_frame(c, MA_OK, id, buf, len < 0 ? 0 : (size_t)len);
}

/* ---------- frames ---------- */

static void send_hello(conn *c) {
  uint8_t buf[512];
  ma_writer w;
  ma_writer_init(&w, buf, sizeof buf);
  ma_put_u32(&w, 1, MA_PROTOCOL_VERSION);
  ma_put_str(&w, 2, "microagent-agent/" MA_AGENT_VERSION);
  static const char *caps[] = {"exec", "pty", "signals", "files", "secrets", "freshen", "shutdown"};
  for (size_t i = 0; i < sizeof caps / sizeof caps[0]; i++) ma_put_str(&w, 3, caps[i]);
  ma_put_u32(&w, 4, MA_MAX_PAYLOAD);
  ma_put_u32(&w, 5, MA_AGENT_WINDOW);
  send_tlv(c, MA_HELLO, 0, &w);
}

static int is_opening(uint8_t t) {
  return t == MA_EXEC || t == MA_FILE_PUT || t == MA_FILE_GET || t == MA_SECRETS || t == MA_FRESHEN ||
         t == MA_SHUTDOWN;
}

static void handle_frame(conn *c, const ma_header *h, const uint8_t *payload) {
  if (h->type == MA_PING) {
    send_frame(c, MA_PONG, h->stream, payload, h->length);
    return;
  }
  if (!c->handshaken && h->type != MA_HELLO) {
    send_error(c, h->stream, "bad_stream", "no handshake yet: send HELLO on stream 0 first", 0);
    return;
  }
  ma_msg m;
  if (ma_decode(h->type, h->stream, payload, h->length, &m) != MA_E_OK) {
    stream *s = h->stream ? find_stream(c, h->stream) : NULL;
    char msg[96];
    snprintf(msg, sizeof msg, "malformed %s payload", ma_type_name(h->type));
    if (s) stream_error(s, "bad_message", msg);
    else send_error(c, h->stream, "bad_message", msg, 0);
    if (h->type == MA_FRESHEN) wipe((void *)payload, h->length); /* refused entropy is entropy still */
    /* An unusable opening frame still consumes its id, so a retry must use a fresh one. */
    if (is_opening(h->type) && h->stream > c->max_seen) c->max_seen = h->stream;
    return;
  }
  if (h->type == MA_HELLO) {
    if (h->stream != 0) {
      send_error(c, h->stream, "bad_stream", "HELLO belongs on stream 0", 0);
    } else if (m.u.hello.version != MA_PROTOCOL_VERSION) {
      send_error(c, 0, "unsupported_version", "this agent speaks protocol version 1", 0);
      c->closing = 1;
    } else {
      if (c->handshaken) end_session(c); /* a new session on the same byte stream */
      c->handshaken = 1;
      c->peer_window = m.u.hello.has_window && m.u.hello.window ? m.u.hello.window : MA_DEFAULT_PEER_WINDOW;
      send_hello(c);
    }
    ma_msg_free(&m);
    return;
  }
  if (is_opening(h->type)) {
    if (h->stream == 0 || h->stream <= c->max_seen) {
      send_error(c, h->stream, "bad_stream", "stream ids must be new and increasing", 0);
    } else if (c->nstreams >= MA_MAX_STREAMS) {
      c->max_seen = h->stream;
      send_error(c, h->stream, "too_many_streams", "too many open streams on this connection", 0);
    } else if (shutdown_requested) {
      c->max_seen = h->stream;
      send_error(c, h->stream, "unsupported", "shutting down", 0);
    } else {
      c->max_seen = h->stream;
      switch (h->type) {
      case MA_EXEC: exec_start(c, h->stream, &m.u.exec); break;
      case MA_FILE_PUT: put_start(c, h->stream, &m.u.put); break;
      case MA_FILE_GET: get_start(c, h->stream, m.u.get_path); break;
      case MA_SECRETS:
        deliver_secrets(c, h->stream, m.u.secrets);
        /* Neither the decoded copies nor the frame's bytes keep the values. */
        for (uint32_t i = 0; i < m.u.secrets->count; i++)
          wipe((void *)m.u.secrets->items[i].value, m.u.secrets->items[i].value_len);
        wipe((void *)payload, h->length);
        break;
      case MA_FRESHEN: freshen(c, h->stream, &m.u.freshen); break;
      case MA_SHUTDOWN:
        shutdown_requested = 1;
        shutdown_action = m.u.shutdown.action;
        if (m.u.shutdown.has_grace) shutdown_grace = m.u.shutdown.grace_ms;
        send_empty(c, MA_OK, h->stream);
        break;
      }
    }
    /* The entropy was only ever in the frame (used or refused): it must not outlive it. */
    if (h->type == MA_FRESHEN) wipe((void *)payload, h->length);
    ma_msg_free(&m);
    return;
  }
  stream *s = h->stream ? find_stream(c, h->stream) : NULL;
  if (!s) {
    /* Late frames for a finished stream are a normal race; ids never opened are a bug. */
    if (h->stream == 0 || h->stream > c->max_seen)
      send_error(c, h->stream, "bad_stream", "no such stream", 0);
    ma_msg_free(&m);
    return;
  }
  switch (h->type) {
  case MA_WINDOW:
    if (s->out_credit < ((int64_t)1 << 40)) s->out_credit += m.u.window;
    break;
  case MA_STDIN:
    if (s->kind != S_EXEC) stream_error(s, "bad_stream", "STDIN on a stream that is not an exec");
    else exec_stdin(s, m.raw, m.raw_len);
    break;
  case MA_FILE_DATA:
    if (s->kind != S_PUT) stream_error(s, "bad_stream", "FILE_DATA on a stream that is not an upload");
    else put_data(s, m.raw, m.raw_len);
    break;
  case MA_EOF:
    if (s->kind == S_PUT) put_finish(s);
    else if (s->kind == S_EXEC) {
      if (!s->stdin_eof) s->stdin_eof = 1;
      exec_write_stdin(s);
    } else stream_error(s, "bad_stream", "EOF on a download");
    break;
  case MA_SIGNAL:
    if (s->kind == S_EXEC) exec_signal_group(s, (int)m.u.signal);
    else stream_error(s, "bad_stream", "SIGNAL on a stream that is not an exec");
    break;
  case MA_RESIZE:
    if (s->kind == S_EXEC && s->pty && s->out_fd >= 0) {
      struct winsize ws = {.ws_row = m.u.resize.rows, .ws_col = m.u.resize.cols};
      ioctl(s->out_fd, TIOCSWINSZ, &ws);
    }
    break;
  case MA_CANCEL:
  case MA_ERROR:
    if (s->kind == S_EXEC) exec_stop(s, 0);
    else abort_stream(s);
    break;
  default:
    stream_error(s, "unknown_type", "message type not accepted by the agent");
    break;
  }
  ma_msg_free(&m);
}

/* Parses every complete frame in the input buffer. Returns -1 on a framing error. */
static int process_input(conn *c) {
  size_t off = 0;
  while (!c->dead && !c->closing) {
    size_t used = 0;
    ma_header h;
    const uint8_t *payload = NULL;
    int err = 0;
    int ev = ma_reader_next(&c->reader, c->in + off, c->in_len - off, &used, &h, &payload, &err);
    off += used;
    if (ev == MA_RD_NEED_MORE) break;
    if (ev == MA_RD_FATAL) {
      send_error(c, 0, ma_err_code(err), err == MA_E_BAD_MAGIC ? "bad frame magic" : "frame length beyond 16 MiB", 0);
      return -1;
    }
    if (ev == MA_RD_FRAME_ERROR) {
      stream *s = h.stream ? find_stream(c, h.stream) : NULL;
      const char *msg = err == MA_E_TOO_LARGE   ? "frame payload beyond 1 MiB"
                        : err == MA_E_BAD_FRAME ? "non-zero flags"
                                                : "unknown message type";
      if (s) stream_error(s, ma_err_code(err), msg);
      else send_error(c, h.stream, ma_err_code(err), msg, 0);
      /* a refused frame still uses up its id */
      if (err == MA_E_TOO_LARGE && h.stream > c->max_seen) c->max_seen = h.stream;
      continue;
    }
    handle_frame(c, &h, payload);
  }
  if (off > 0) {
    memmove(c->in, c->in + off, c->in_len - off);
    c->in_len -= off;
  }
  return 0;
}

static void conn_readable(conn *c) {
  if (c->in_len == MA_IN_CAP) return; /* cannot happen: a frame always fits */
  ssize_t r;
  do r = read(c->fd, c->in + c->in_len, MA_IN_CAP - c->in_len);
  while (r < 0 && errno == EINTR);
  if (r < 0 && errno == EAGAIN) return;
  if (r == 0 && c->is_port) {
    /* The host side hung up (virtio_console reads EOF only once its data is drained). The port
     * stays open: closing and re-opening it could throw away a reconnecting host's HELLO. */
    ma_dbg("virtio port: host disconnected");
    port_session_end(c);
    return;
  }
  if (r <= 0) {
    ma_dbg("connection closed (%s)", r == 0 ? "eof" : strerror(errno));
    c->dead = 1;
    return;
  }
  c->in_len += (size_t)r;
  if (c->discarding) {
    /* Resynchronise on the next HELLO header (magic, HELLO, no flags, stream 0): a reconnecting
     * host whose hang-up we never saw starts with one. */
    static const uint8_t hello[8] = {MA_MAGIC0, MA_MAGIC1, MA_HELLO, 0, 0, 0, 0, 0};
    uint8_t *at = memmem(c->in, c->in_len, hello, sizeof hello);
    if (!at) {
      size_t keep = c->in_len < sizeof hello - 1 ? c->in_len : sizeof hello - 1;
      memmove(c->in, c->in + c->in_len - keep, keep);
      c->in_len = keep;
      return;
    }
    ma_dbg("virtio port: found a HELLO, resynchronised");
    memmove(c->in, at, c->in_len - (size_t)(at - c->in));
    c->in_len -= (size_t)(at - c->in);
    c->discarding = 0;
    end_session(c);
  }
  if (process_input(c) < 0) {
    /* Framing is lost: say why, then drop the connection (its streams die with it). */
    c->closing = 1;
    c->in_len = 0;
  }
}

/* ---------- connections ---------- */

/* Ends the host's session on the virtio port and waits for the next host on the same fd. */
static void port_session_end(conn *c) {
  end_session(c);
  c->in_len = 0;
  c->reader.skip = 0;
  c->closing = 0;
  c->discarding = 0;
  c->out_off = c->out_len = 0; /* nobody left to read it */
  port_idle = 1;
}

static conn *new_conn(int fd, int is_port) {
  conn *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  c->in = malloc(MA_IN_CAP);
  if (!c->in) {
    free(c);
    return NULL;
  }
  c->fd = fd;
  c->is_port = is_port;
  c->peer_window = MA_DEFAULT_PEER_WINDOW;
  c->next = conns;
  conns = c;
  nconns++;
  return c;
}


static void open_port(void) {
  char dev[300];
  static int misses;
  if (ma_find_virtio_port(cfg->virtio_name, dev, sizeof dev) < 0) {
    /* The port shows up shortly after virtio_console loads: look again soon, so that a boot does
     * not wait longer than it must, then settle to a slower pace. */
    if (++misses == 200)
      ma_log("virtio port %s not found after 10 s (is virtio_console in /lib/modules/load.list?)",
             cfg->virtio_name);
    port_retry_at = ma_now_ms() + (misses <= 100 ? 10 : 90);
    return;
  }
  int fd = open(dev, O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) {
    ma_dbg("open %s: %s", dev, strerror(errno));
    port_retry_at = ma_now_ms() + 100;
    return;
  }
  port_conn = new_conn(fd, 1);
  if (!port_conn) {
    close(fd);
    port_retry_at = ma_now_ms() + 100;
    return;
  }
  port_idle = 1; /* checked before the first poll */
  ma_dbg("serving on %s", dev);
}

static int open_listener(void) {
  int fd;
  if (cfg->channel == MA_CH_UNIX) {
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(cfg->unix_path) >= sizeof a.sun_path) {
      errno = ENAMETOOLONG;
      return -1;
    }
    strcpy(a.sun_path, cfg->unix_path);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return -1;
    unlink(cfg->unix_path);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || chmod(cfg->unix_path, 0600) < 0 || listen(fd, 64) < 0) {
      close(fd);
      return -1;
    }
  } else {
    struct ma_sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_port = cfg->vsock_port, .svm_cid = MA_VMADDR_CID_ANY};
    fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 16) < 0) {
      close(fd);
      return -1;
    }
  }
  return fd;
}

static void accept_conns(void) {
  for (;;) {
    int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) return;
    if (nconns >= MA_MAX_CONNS || !new_conn(fd, 0)) {
      close(fd);
      continue;
    }
    ma_dbg("connection accepted");
  }
}

/* ---------- the loop ---------- */

static void reap(void) {
  for (;;) {
    int st;
    pid_t pid = waitpid(-1, &st, WNOHANG);
    if (pid <= 0) return;
    for (conn *c = conns; c; c = c->next)
      for (stream *s = c->streams; s; s = s->next)
        if (s->kind == S_EXEC && s->pid == pid && !s->exited) {
          s->exited = 1;
          s->wstatus = st;
          /* the process is gone; nobody will read stdin any more */
          if (!s->pty) close_fd(&s->in_fd);
          s->inlen = 0;
        }
  }
}

static void drain_signals(void) {
  struct signalfd_siginfo si;
  while (read(sig_fd, &si, sizeof si) == (ssize_t)sizeof si) {
    if (si.ssi_signo == SIGCHLD) continue;
    ma_log("signal %u: shutting down", si.ssi_signo);
    shutdown_requested = 1;
  }
  reap();
}

static void sweep(void) {
  conn **cp = &conns;
  while (*cp) {
    conn *c = *cp;
    stream **sp = &c->streams;
    while (*sp) {
      stream *s = *sp;
      if (s->dead && (s->kind != S_EXEC || s->exited || s->pid <= 0 || c->dead)) {
        *sp = s->next;
        free_stream(s);
      } else {
        sp = &s->next;
      }
    }
    if (c->dead) {
      end_session(c);
      for (stream *s = c->streams, *n; s; s = n) {
        n = s->next;
        free_stream(s);
      }
      close(c->fd);
      if (c == port_conn) {
        /* An I/O error on the port: re-open it (which also drops whatever it still buffers). */
        port_conn = NULL;
        port_retry_at = ma_now_ms() + 50;
      }
      *cp = c->next;
      free(c->in);
      free(c->out);
      free(c);
      nconns--;
    } else {
      cp = &c->next;
    }
  }
}

static void timers(int64_t now, int64_t *next) {
  for (conn *c = conns; c; c = c->next)
    for (stream *s = c->streams; s; s = s->next) {
      if (s->kind != S_EXEC || s->dead) continue;
      if (s->deadline_ms && !s->exited && now >= s->deadline_ms) {
        s->deadline_ms = 0;
        exec_stop(s, 1);
      }
      if (s->kill_at_ms && now >= s->kill_at_ms) {
        s->kill_at_ms = 0;
        exec_signal_group(s, SIGKILL);
      }
      exec_maybe_finish(s, now);
      if (s->dead) continue;
      if (s->hold_until_ms && now >= s->hold_until_ms) s->hold_until_ms = 0;
      int64_t d[4] = {s->deadline_ms, s->kill_at_ms, s->exited ? s->linger_until_ms : 0, s->hold_until_ms};
      for (int i = 0; i < 4; i++)
        if (d[i] && d[i] < *next) *next = d[i];
      if (s->exited && !s->linger_until_ms && (s->out_fd >= 0 || s->err_fd >= 0) && now + MA_LINGER_MS < *next)
        *next = now + MA_LINGER_MS;
    }
}

typedef struct {
  int kind;
  void *p;
} slot;
enum { K_LISTEN = 1, K_SIG, K_CONN, K_OUT, K_ERR, K_IN };

static struct pollfd *pfds;
static slot *slots;
static size_t pcap;

static void add_poll(size_t *n, int fd, short ev, int kind, void *p) {
  if (*n == pcap) {
    size_t cap = pcap ? pcap * 2 : 64;
    struct pollfd *np = realloc(pfds, cap * sizeof *np);
    if (!np) return;
    pfds = np;
    slot *ns = realloc(slots, cap * sizeof *ns);
    if (!ns) return;
    slots = ns;
    pcap = cap;
  }
  pfds[*n] = (struct pollfd){.fd = fd, .events = ev};
  slots[*n] = (slot){kind, p};
  (*n)++;
}

static int exec_can_read(stream *s, int is_err) {
  uint64_t sent = is_err ? s->err_sent : s->out_sent;
  int has = is_err ? s->has_err_limit : s->has_out_limit;
  uint64_t limit = is_err ? s->err_limit : s->out_limit;
  if (s->cancelled || (has && sent >= limit)) return 1; /* dropping needs no credit */
  return s->out_credit > 0 && out_pending(s->c) < MA_OUT_HIGH;
}

/* Terminates our own execs on shutdown: TERM to every group, bounded wait, then KILL. */
static void stop_all_execs(uint32_t grace_ms) {
  for (conn *c = conns; c; c = c->next)
    for (stream *s = c->streams; s; s = s->next)
      if (s->kind == S_EXEC && s->pid > 0 && !s->exited) exec_signal_group(s, SIGTERM);
  int64_t until = ma_now_ms() + grace_ms;
  for (;;) {
    reap();
    int alive = 0;
    for (conn *c = conns; c; c = c->next)
      for (stream *s = c->streams; s; s = s->next)
        if (s->kind == S_EXEC && s->pid > 0 && !s->exited) alive = 1;
    if (!alive || ma_now_ms() >= until) break;
    ma_sleep_ms(10);
  }
  for (conn *c = conns; c; c = c->next)
    for (stream *s = c->streams; s; s = s->next)
      if (s->kind == S_EXEC && s->pid > 0 && !s->exited) exec_signal_group(s, SIGKILL);
}

int ma_serve(const ma_serve_config *config, uint32_t *grace_out) {
  cfg = config;
  sigset_t mask;
  sigemptyset(&mask);
  int sigs[] = {SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2, SIGPWR};
  for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) sigaddset(&mask, sigs[i]);
  sigprocmask(SIG_BLOCK, &mask, NULL);
  signal(SIGPIPE, SIG_IGN);
  sig_fd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
  if (sig_fd < 0) ma_fatal("signalfd: %s", strerror(errno));

  if (cfg->channel == MA_CH_VIRTIO) {
    open_port();
  } else {
    listen_fd = open_listener();
    if (listen_fd < 0) ma_fatal("cannot listen: %s", strerror(errno));
    if (cfg->channel == MA_CH_UNIX) ma_log("listening on %s", cfg->unix_path);
    else ma_log("listening on vsock port %u", cfg->vsock_port);
  }

  int64_t shutdown_flush_until = 0;
  for (;;) {
    int64_t now = ma_now_ms();
    int64_t next = now + 1000;
    timers(now, &next);
    int pump = 0;
    for (conn *c = conns; c; c = c->next)
      for (stream *s = c->streams; s; s = s->next)
        if (get_can_pump(s)) {
          get_pump(s);
          if (get_can_pump(s)) pump = 1;
        }
    for (conn *c = conns; c; c = c->next) flush_conn(c);
    sweep();

    if (shutdown_requested) {
      /* Let the OK (and any final output) reach the host, briefly. */
      if (!shutdown_flush_until) shutdown_flush_until = now + 1000;
      int pending = 0;
      for (conn *c = conns; c; c = c->next)
        if (out_pending(c)) pending = 1;
      if (!pending || now >= shutdown_flush_until) {
        stop_all_execs(shutdown_grace);
        for (conn *c = conns; c; c = c->next) flush_conn(c);
        if (listen_fd >= 0) {
          close(listen_fd);
          if (cfg->channel == MA_CH_UNIX) unlink(cfg->unix_path);
        }
        *grace_out = shutdown_grace;
        return shutdown_action;
      }
      if (shutdown_flush_until < next) next = shutdown_flush_until;
    }

    if (cfg->channel == MA_CH_VIRTIO && !port_conn && now >= port_retry_at) open_port();
    if (port_conn && port_idle) {
      struct pollfd p = {.fd = port_conn->fd, .events = POLLIN};
      if (poll(&p, 1, 0) >= 0 && !(p.revents & POLLHUP)) {
        port_idle = 0;
        ma_dbg("virtio port: host connected");
      }
    }
    if (cfg->channel == MA_CH_VIRTIO && (!port_conn || port_idle)) {
      int64_t t = port_conn ? now + 100 : port_retry_at;
      if (t < next) next = t;
    }

    size_t n = 0;
    add_poll(&n, sig_fd, POLLIN, K_SIG, NULL);
    if (listen_fd >= 0 && nconns < MA_MAX_CONNS) add_poll(&n, listen_fd, POLLIN, K_LISTEN, NULL);
    for (conn *c = conns; c; c = c->next) {
      if (c == port_conn && port_idle) continue;
      short ev = 0;
      if (!c->closing && out_pending(c) < MA_OUT_HIGH) ev |= POLLIN;
      if (out_pending(c)) ev |= POLLOUT;
      add_poll(&n, c->fd, ev, K_CONN, c);
      for (stream *s = c->streams; s; s = s->next) {
        if (s->kind != S_EXEC || s->dead) continue;
        if (!s->hold_until_ms) { /* only output is held; stdin goes on */
          if (s->out_fd >= 0 && exec_can_read(s, 0)) add_poll(&n, s->out_fd, POLLIN, K_OUT, s);
          if (s->err_fd >= 0 && exec_can_read(s, 1)) add_poll(&n, s->err_fd, POLLIN, K_ERR, s);
        }
        if (s->in_fd >= 0 && (s->inlen > 0 || s->stdin_eof == 1) && !s->exited)
          add_poll(&n, s->in_fd, POLLOUT, K_IN, s);
      }
    }
    int timeout = pump ? 0 : (int)(next > now ? next - now : 0);
    int r = poll(pfds, n, timeout);
    if (r < 0) {
      if (errno == EINTR) continue;
      ma_fatal("poll: %s", strerror(errno));
    }
    for (size_t i = 0; i < n && r > 0; i++) {
      short re = pfds[i].revents;
      if (!re) continue;
      slot sl = slots[i];
      if (sl.kind == K_SIG) {
        drain_signals();
      } else if (sl.kind == K_LISTEN) {
        accept_conns();
      } else if (sl.kind == K_CONN) {
        conn *c = sl.p;
        if (c->dead) continue;
        if (c == port_conn && (re & POLLHUP) && !(re & POLLIN)) {
          ma_dbg("virtio port: hang-up");
          port_session_end(c);
          continue;
        }
        if (re & POLLOUT) flush_conn(c);
        if ((re & (POLLIN | POLLHUP | POLLERR)) && !c->dead && !c->closing) conn_readable(c);
      } else {
        stream *s = sl.p;
        if (s->dead) continue;
        if (sl.kind == K_OUT && s->out_fd == pfds[i].fd) exec_read(s, 0);
        else if (sl.kind == K_ERR && s->err_fd == pfds[i].fd) exec_read(s, 1);
        else if (sl.kind == K_IN && s->in_fd == pfds[i].fd) {
          if (re & (POLLERR | POLLHUP)) {
            s->stdin_broken = 1;
            s->grant_pending += (uint32_t)s->inlen;
            s->inlen = 0;
            if (!s->pty) close_fd(&s->in_fd);
            exec_grant(s, 1);
          } else {
            exec_write_stdin(s);
          }
        }
      }
    }
  }
}
