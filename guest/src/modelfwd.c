#define _GNU_SOURCE
/* The model forwarder (docs/protocol.md, "Model channel"): a child of PID 1 that listens on guest
 * TCP 127.0.0.1:PORT and carries each connection over a virtio-serial port to the host's model
 * bridge, which resolves the model's runner per connection. It needs no NIC, so a workspace with
 * `--network isolated` or under egress mediation reaches its model all the same.
 *
 * Frames on the port, both ways: magic 0x6d, type, connection id (u32 BE), length (u32 BE), payload.
 * OPEN (guest to host, empty) starts a connection; DATA carries bytes; EOF says the sender sends no
 * more; CLOSE ends the connection at once, both ways. A connection made while no host is connected
 * waits (up to MF_PENDING_MS) for one, so a guest may connect the moment its VM is up. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "agent.h"

#define MF_MAGIC 0x6du
#define MF_OPEN 1u
#define MF_DATA 2u
#define MF_EOF 3u
#define MF_CLOSE 4u
#define MF_HEADER 10u
#define MF_MAX_PAYLOAD (64u * 1024u)
#define MF_MAX_CONNS 64
/* Bytes held for a guest client that does not read; past it the connection is closed. */
#define MF_OUT_CAP (16u * 1024u * 1024u)
#define MF_PENDING_MS 10000

typedef struct {
  int fd; /* -1: free slot */
  uint32_t id;
  uint8_t *out;
  size_t out_len, out_cap;
  int read_done;  /* the guest client closed its side; EOF sent to the host */
  int host_eof;   /* the host sends no more: shut down the client's side once out drains */
  int shut_wr;
  int64_t pending_since; /* accepted while no host was connected: OPEN not sent yet (0: sent) */
} mf_conn;

static mf_conn conns[MF_MAX_CONNS];
static uint32_t next_id = 1;
static int port_fd = -1;
static int host_connected;
static const char *channel_name = "model channel"; /* for log lines: the virtio port's name */
static uint8_t inbuf[MF_HEADER + MF_MAX_PAYLOAD];
static size_t in_len;


/* Writes a whole frame to the port, waiting while it is full. -1: the host went away. */
static int port_send(uint8_t type, uint32_t id, const void *p, uint32_t len) {
  uint8_t h[MF_HEADER] = {MF_MAGIC, type};
  uint32_t be = htonl(id), bl = htonl(len);
  memcpy(h + 2, &be, 4);
  memcpy(h + 6, &bl, 4);
  const uint8_t *parts[2] = {h, p};
  size_t sizes[2] = {MF_HEADER, len};
  for (int i = 0; i < 2; i++) {
    size_t off = 0;
    while (off < sizes[i]) {
      ssize_t w = write(port_fd, parts[i] + off, sizes[i] - off);
      if (w > 0) {
        off += (size_t)w;
      } else if (w < 0 && (errno == EAGAIN || errno == EINTR)) {
        struct pollfd pf = {.fd = port_fd, .events = POLLOUT};
        if (poll(&pf, 1, 1000) > 0 && (pf.revents & POLLHUP) && !(pf.revents & POLLOUT)) return -1;
      } else {
        return -1;
      }
    }
  }
  return 0;
}

static void conn_free(mf_conn *c) {
  if (c->fd >= 0) close(c->fd);
  free(c->out);
  memset(c, 0, sizeof *c);
  c->fd = -1;
}

static mf_conn *conn_by_id(uint32_t id) {
  for (int i = 0; i < MF_MAX_CONNS; i++)
    if (conns[i].fd >= 0 && conns[i].id == id) return &conns[i];
  return NULL;
}

static void host_gone(void) {
  if (host_connected) ma_dbg("model channel: host disconnected");
  host_connected = 0;
  in_len = 0;
  for (int i = 0; i < MF_MAX_CONNS; i++)
    if (conns[i].fd >= 0 && !conns[i].pending_since) conn_free(&conns[i]);
}

static void accept_one(int listen_fd) {
  int fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (fd < 0) return;
  mf_conn *slot = NULL;
  for (int i = 0; i < MF_MAX_CONNS && !slot; i++)
    if (conns[i].fd < 0) slot = &conns[i];
  if (!slot) {
    close(fd); /* too many connections: the client sees the connection closed */
    return;
  }
  slot->fd = fd;
  slot->id = next_id++;
  if (!host_connected) {
    slot->pending_since = ma_now_ms();
    return;
  }
  if (port_send(MF_OPEN, slot->id, NULL, 0) < 0) host_gone();
}

/* Connections waiting for a host: opened once one is there, closed when they waited too long. */
static void pending_conns(void) {
  int64_t now = ma_now_ms();
  for (int i = 0; i < MF_MAX_CONNS; i++) {
    mf_conn *c = &conns[i];
    if (c->fd < 0 || !c->pending_since) continue;
    if (host_connected) {
      c->pending_since = 0;
      if (port_send(MF_OPEN, c->id, NULL, 0) < 0) {
        host_gone();
        return;
      }
    } else if (now - c->pending_since > MF_PENDING_MS) {
      conn_free(c);
    }
  }
}

/* The client sent bytes (or closed its side). */
static void client_readable(mf_conn *c) {
  uint8_t buf[32 * 1024];
  ssize_t n = read(c->fd, buf, sizeof buf);
  if (n > 0) {
    if (port_send(MF_DATA, c->id, buf, (uint32_t)n) < 0) host_gone();
  } else if (n == 0) {
    c->read_done = 1;
    if (port_send(MF_EOF, c->id, NULL, 0) < 0) host_gone();
  } else if (errno != EAGAIN && errno != EINTR) {
    uint32_t id = c->id;
    conn_free(c);
    if (port_send(MF_CLOSE, id, NULL, 0) < 0) host_gone();
  }
}

/* Both directions done: the connection ends. */
static void maybe_finish(mf_conn *c) {
  if (c->fd < 0 || !c->read_done || !c->shut_wr) return;
  uint32_t id = c->id;
  conn_free(c);
  if (port_send(MF_CLOSE, id, NULL, 0) < 0) host_gone();
}

static void client_writable(mf_conn *c) {
  while (c->out_len > 0) {
    ssize_t w = write(c->fd, c->out, c->out_len);
    if (w > 0) {
      memmove(c->out, c->out + w, c->out_len - (size_t)w);
      c->out_len -= (size_t)w;
    } else if (w < 0 && (errno == EAGAIN || errno == EINTR)) {
      return;
    } else {
      uint32_t id = c->id;
      conn_free(c);
      if (port_send(MF_CLOSE, id, NULL, 0) < 0) host_gone();
      return;
    }
  }
  if (c->host_eof && !c->shut_wr) {
    shutdown(c->fd, SHUT_WR);
    c->shut_wr = 1;
    maybe_finish(c);
  }
}

static void host_frame(uint8_t type, uint32_t id, const uint8_t *p, uint32_t len) {
  mf_conn *c = conn_by_id(id);
  if (!c) return; /* a connection closed here already */
  if (type == MF_DATA) {
    if (c->out_len + len > MF_OUT_CAP) {
      conn_free(c);
      if (port_send(MF_CLOSE, id, NULL, 0) < 0) host_gone();
      return;
    }
    if (c->out_len + len > c->out_cap) {
      size_t cap = c->out_cap ? c->out_cap : 64 * 1024;
      while (cap < c->out_len + len) cap *= 2;
      uint8_t *grown = realloc(c->out, cap);
      if (!grown) {
        conn_free(c);
        if (port_send(MF_CLOSE, id, NULL, 0) < 0) host_gone();
        return;
      }
      c->out = grown;
      c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, p, len);
    c->out_len += len;
    client_writable(c);
  } else if (type == MF_EOF) {
    c->host_eof = 1;
    client_writable(c);
  } else if (type == MF_CLOSE) {
    conn_free(c);
  }
}

/* Bytes from the host: whole frames are handled; a bad frame drops every connection and what is
 * buffered (the host bridge reconnects and both sides start clean). */
static void port_readable(void) {
  ssize_t n = read(port_fd, inbuf + in_len, sizeof inbuf - in_len);
  if (n <= 0) {
    if (n == 0 || (errno != EAGAIN && errno != EINTR)) host_gone();
    return;
  }
  in_len += (size_t)n;
  size_t off = 0;
  while (in_len - off >= MF_HEADER) {
    const uint8_t *h = inbuf + off;
    uint32_t id, len;
    memcpy(&id, h + 2, 4);
    memcpy(&len, h + 6, 4);
    id = ntohl(id);
    len = ntohl(len);
    if (h[0] != MF_MAGIC || h[1] < MF_DATA || h[1] > MF_CLOSE || len > MF_MAX_PAYLOAD) {
      ma_log("%s: bad frame from the host; dropping its connections", channel_name);
      host_gone();
      return;
    }
    if (in_len - off < MF_HEADER + len) break;
    host_frame(h[1], id, h + MF_HEADER, len);
    if (!host_connected) return;
    off += MF_HEADER + len;
  }
  memmove(inbuf, inbuf + off, in_len - off);
  in_len -= off;
}

static void run(const char *port_name, unsigned tcp_port) {
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)tcp_port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (lfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof a) < 0 || listen(lfd, 64) < 0) {
    ma_log("%s: cannot listen on 127.0.0.1:%u: %s", channel_name, tcp_port, strerror(errno));
    _exit(1);
  }
  for (int i = 0; i < MF_MAX_CONNS; i++) conns[i].fd = -1;
  for (int tries = 0; port_fd < 0; tries++) {
    char dev[300];
    if (ma_find_virtio_port(port_name, dev, sizeof dev) == 0)
      port_fd = open(dev, O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (port_fd < 0) {
      if (tries == 500) ma_log("%s: virtio port %s not found", channel_name, port_name);
      ma_sleep_ms(20);
    }
  }
  ma_dbg("model channel: 127.0.0.1:%u over %s", tcp_port, port_name);
  for (;;) {
    if (!host_connected) {
      /* An unconnected port reports POLLHUP at once: look every 100 ms for a host. */
      struct pollfd p = {.fd = port_fd, .events = POLLIN};
      if (poll(&p, 1, 0) >= 0 && !(p.revents & POLLHUP)) {
        host_connected = 1;
        ma_dbg("model channel: host connected");
      }
    }
    pending_conns();
    struct pollfd pf[2 + MF_MAX_CONNS];
    mf_conn *who[2 + MF_MAX_CONNS];
    int n = 0;
    pf[n] = (struct pollfd){.fd = lfd, .events = POLLIN};
    who[n++] = NULL;
    if (host_connected) {
      pf[n] = (struct pollfd){.fd = port_fd, .events = POLLIN};
      who[n++] = NULL;
    }
    for (int i = 0; i < MF_MAX_CONNS; i++) {
      mf_conn *c = &conns[i];
      if (c->fd < 0) continue;
      short ev = 0;
      if (!c->read_done && host_connected && !c->pending_since) ev |= POLLIN;
      if (c->out_len > 0) ev |= POLLOUT;
      if (!ev) continue;
      pf[n] = (struct pollfd){.fd = c->fd, .events = ev};
      who[n++] = c;
    }
    int r = poll(pf, (nfds_t)n, host_connected ? -1 : 100);
    if (r < 0) {
      if (errno == EINTR) continue;
      ma_log("%s: poll: %s", channel_name, strerror(errno));
      _exit(1);
    }
    for (int i = 0; i < n; i++) {
      short re = pf[i].revents;
      if (!re) continue;
      if (i == 0) {
        accept_one(lfd);
      } else if (i == 1 && host_connected && who[i] == NULL) {
        if ((re & POLLHUP) && !(re & POLLIN)) host_gone();
        else port_readable();
      } else if (who[i] && who[i]->fd == pf[i].fd) {
        mf_conn *c = who[i];
        if (re & POLLOUT) client_writable(c);
        if (c->fd >= 0 && (re & (POLLIN | POLLHUP | POLLERR)) && !c->read_done) client_readable(c);
        if (c->fd >= 0) maybe_finish(c);
      }
    }
  }
}

void ma_modelfwd_start(const char *port_name, unsigned tcp_port) {
  pid_t pid = fork();
  if (pid < 0) {
    ma_log("%s: fork: %s", port_name, strerror(errno));
    return;
  }
  if (pid > 0) return;
  /* Nothing of the parent's: started by FRESHEN, the parent is the channel server, whose virtio port
   * (opened once at a time) and connections must not stay open in here. */
  for (int fd = 3; fd < 1024; fd++) close(fd);
  channel_name = port_name;
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
  signal(SIGPIPE, SIG_IGN);
  run(port_name, tcp_port);
  _exit(0);
}

void ma_broker_forwarders_start(const char *list) {
  char copy[128];
  snprintf(copy, sizeof copy, "%s", list);
  char *save = NULL;
  int n = 0;
  for (char *tok = strtok_r(copy, ",", &save); tok && n < 8; tok = strtok_r(NULL, ",", &save), n++) {
    unsigned port = (unsigned)strtoul(tok, NULL, 10);
    if (port == 0 || port > 0xffffu) continue;
    char name[32];
    snprintf(name, sizeof name, "microagent.broker.%d", n);
    ma_modelfwd_start(name, port);
  }
}
