/* The channel server's connections and streams: output buffering, stream bookkeeping, the frames
 * received (dispatched to exec, files, secrets and freshen), and the channel's sockets (unix, vsock,
 * virtio-serial port). */
#include "serve_internal.h"

/* ---------- output ---------- */

int out_reserve(conn *c, size_t n) {
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

size_t out_pending(const conn *c) { return c->out_len - c->out_off; }

void send_frame(conn *c, uint8_t type, uint32_t stream, const void *payload, size_t len) {
  if (c->dead || out_reserve(c, MA_HEADER_SIZE + len) < 0) return;
  ma_write_header(c->out + c->out_len, type, stream, (uint32_t)len);
  if (len) memcpy(c->out + c->out_len + MA_HEADER_SIZE, payload, len);
  c->out_len += MA_HEADER_SIZE + len;
}

void send_tlv(conn *c, uint8_t type, uint32_t stream, const ma_writer *w) {
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

void send_error(conn *c, uint32_t stream, const char *code, const char *message, int err_no) {
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

void send_errno(conn *c, uint32_t stream, const char *what, int e) {
  char msg[600];
  snprintf(msg, sizeof msg, "%s: %s", what, strerror(e));
  send_error(c, stream, errno_code(e), msg, e);
}

void send_window(conn *c, uint32_t stream, uint32_t n) {
  uint8_t buf[16];
  ma_writer w;
  ma_writer_init(&w, buf, sizeof buf);
  ma_put_u32(&w, 1, n);
  send_tlv(c, MA_WINDOW, stream, &w);
}

void send_empty(conn *c, uint8_t type, uint32_t stream) { send_frame(c, type, stream, NULL, 0); }


void flush_conn(conn *c) {
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

stream *new_stream(conn *c, uint32_t id, int kind) {
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

void close_fd(int *fd) {
  if (*fd >= 0) close(*fd);
  *fd = -1;
}

void close_exec_fds(stream *s) {
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
void abort_stream(stream *s) {
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

void stream_error(stream *s, const char *code, const char *message) {
  send_error(s->c, s->id, code, message, 0);
  abort_stream(s);
}

void free_stream(stream *s) {
  free(s->inbuf);
  free(s->path);
  free(s->tmp_path);
  free(s);
}

void end_session(conn *c) {
  for (stream *s = c->streams; s; s = s->next) abort_stream(s);
  c->handshaken = 0;
  c->max_seen = 0;
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

void conn_readable(conn *c) {
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
void port_session_end(conn *c) {
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


void open_port(void) {
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

int open_listener(void) {
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

void accept_conns(void) {
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
