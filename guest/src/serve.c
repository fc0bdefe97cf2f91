/* The channel server: one poll() loop multiplexing connections, execs and file transfers.
 * Memory is bounded by construction: a fixed input buffer per connection (one maximal frame), a
 * send buffer we stop filling above MA_OUT_HIGH, and per-stream credit in both directions.
 *
 * This unit is the loop and the server's state; serve_conn.c (connections, streams, frames),
 * serve_exec.c, serve_files.c and serve_freshen.c are the rest, sharing serve_internal.h. */
#include "serve_internal.h"

const ma_serve_config *cfg;
conn *conns;
int nconns;
int listen_fd = -1;
static int sig_fd = -1;
int shutdown_requested;
int shutdown_action;
uint32_t shutdown_grace = 5000;
int64_t port_retry_at;
conn *port_conn;
int port_idle; /* the host is not connected: poll() would spin on POLLHUP */

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
