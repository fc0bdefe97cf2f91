/* The channel server's exec: a process per stream (pipes or a pty), its output under credit, stdin,
 * signals, timeouts and output limits. */
#include "serve_internal.h"

static const char *const DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

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

void exec_start(conn *c, uint32_t id, const ma_exec *x) {
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

void exec_signal_group(stream *s, int sig) {
  if (s->pid > 0) kill(-s->pid, sig);
}

void exec_stop(stream *s, int timed_out) {
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
void exec_read(stream *s, int is_err) {
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

void exec_grant(stream *s, int force) {
  if (s->grant_pending && (force || s->grant_pending >= MA_AGENT_WINDOW / 4 || s->inlen == 0)) {
    send_window(s->c, s->id, s->grant_pending);
    s->in_credit += s->grant_pending;
    s->grant_pending = 0;
  }
}

void exec_write_stdin(stream *s) {
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

void exec_stdin(stream *s, const uint8_t *p, uint32_t n) {
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


void exec_maybe_finish(stream *s, int64_t now) {
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

int exec_can_read(stream *s, int is_err) {
  uint64_t sent = is_err ? s->err_sent : s->out_sent;
  int has = is_err ? s->has_err_limit : s->has_out_limit;
  uint64_t limit = is_err ? s->err_limit : s->out_limit;
  if (s->cancelled || (has && sent >= limit)) return 1; /* dropping needs no credit */
  return s->out_credit > 0 && out_pending(s->c) < MA_OUT_HIGH;
}
