#include "proto.h"

#include <stdlib.h>
#include <string.h>

static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static uint32_t rd32(const uint8_t *p) {
  return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static void wr16(uint8_t *p, uint16_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
}
static void wr32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

const char *ma_err_code(int err) {
  switch (err) {
  case MA_E_OK: return "ok";
  case MA_E_BAD_MAGIC: return "bad_magic";
  case MA_E_HARD_TOO_LARGE: return "frame_too_large";
  case MA_E_TOO_LARGE: return "frame_too_large";
  case MA_E_BAD_FRAME: return "bad_frame";
  case MA_E_UNKNOWN_TYPE: return "unknown_type";
  default: return "bad_message";
  }
}

int ma_parse_header(const uint8_t *p, ma_header *h) {
  if (p[0] != MA_MAGIC0 || p[1] != MA_MAGIC1) return MA_E_BAD_MAGIC;
  h->type = p[2];
  h->flags = p[3];
  h->stream = rd32(p + 4);
  h->length = rd32(p + 8);
  if (h->length > MA_HARD_LIMIT) return MA_E_HARD_TOO_LARGE;
  return MA_E_OK;
}

int ma_type_known(uint8_t t) {
  switch (t) {
  case MA_HELLO: case MA_PING: case MA_PONG: case MA_ERROR: case MA_OK: case MA_WINDOW:
  case MA_EXEC: case MA_STDIN: case MA_EOF: case MA_STDOUT: case MA_STDERR: case MA_EXIT:
  case MA_SIGNAL: case MA_RESIZE: case MA_CANCEL: case MA_STARTED: case MA_FILE_PUT:
  case MA_FILE_GET: case MA_FILE_INFO: case MA_FILE_DATA: case MA_SECRETS: case MA_FRESHEN:
  case MA_SHUTDOWN:
    return 1;
  default: return 0;
  }
}

int ma_type_is_raw(uint8_t t) {
  return t == MA_PING || t == MA_PONG || t == MA_STDIN || t == MA_STDOUT || t == MA_STDERR ||
         t == MA_FILE_DATA;
}

const char *ma_type_name(uint8_t t) {
  switch (t) {
  case MA_HELLO: return "HELLO";
  case MA_PING: return "PING";
  case MA_PONG: return "PONG";
  case MA_ERROR: return "ERROR";
  case MA_OK: return "OK";
  case MA_WINDOW: return "WINDOW";
  case MA_EXEC: return "EXEC";
  case MA_STDIN: return "STDIN";
  case MA_EOF: return "EOF";
  case MA_STDOUT: return "STDOUT";
  case MA_STDERR: return "STDERR";
  case MA_EXIT: return "EXIT";
  case MA_SIGNAL: return "SIGNAL";
  case MA_RESIZE: return "RESIZE";
  case MA_CANCEL: return "CANCEL";
  case MA_STARTED: return "STARTED";
  case MA_FILE_PUT: return "FILE_PUT";
  case MA_FILE_GET: return "FILE_GET";
  case MA_FILE_INFO: return "FILE_INFO";
  case MA_FILE_DATA: return "FILE_DATA";
  case MA_SECRETS: return "SECRETS";
  case MA_FRESHEN: return "FRESHEN";
  case MA_SHUTDOWN: return "SHUTDOWN";
  default: return "UNKNOWN";
  }
}

int ma_check_header(const ma_header *h) {
  if (h->length > MA_MAX_PAYLOAD) return MA_E_TOO_LARGE;
  if (h->flags != 0) return MA_E_BAD_FRAME;
  if (!ma_type_known(h->type)) return MA_E_UNKNOWN_TYPE;
  return MA_E_OK;
}

void ma_write_header(uint8_t *p, uint8_t type, uint32_t stream, uint32_t length) {
  p[0] = MA_MAGIC0;
  p[1] = MA_MAGIC1;
  p[2] = type;
  p[3] = 0;
  wr32(p + 4, stream);
  wr32(p + 8, length);
}

int ma_reader_next(ma_reader *r, const uint8_t *buf, size_t len, size_t *used, ma_header *h,
                   const uint8_t **payload, int *err) {
  size_t off = 0;
  *used = 0;
  if (r->skip) {
    size_t n = len < r->skip ? len : (size_t)r->skip;
    off = n;
    r->skip -= n;
    if (r->skip) {
      *used = off;
      return MA_RD_NEED_MORE;
    }
  }
  *used = off;
  if (len - off < MA_HEADER_SIZE) return MA_RD_NEED_MORE;
  int e = ma_parse_header(buf + off, h);
  if (e != MA_E_OK) {
    *err = e;
    return MA_RD_FATAL;
  }
  int fe = ma_check_header(h);
  if (fe == MA_E_TOO_LARGE) {
    /* Never buffered: the caller reports it, the reader drops the payload as it arrives. */
    r->skip = h->length;
    *used = off + MA_HEADER_SIZE;
    *err = fe;
    return MA_RD_FRAME_ERROR;
  }
  if (len - off - MA_HEADER_SIZE < h->length) return MA_RD_NEED_MORE;
  *payload = buf + off + MA_HEADER_SIZE;
  *used = off + MA_HEADER_SIZE + h->length;
  if (fe != MA_E_OK) {
    *err = fe;
    return MA_RD_FRAME_ERROR;
  }
  return MA_RD_FRAME;
}

void ma_tlv_init(ma_tlv_iter *it, const uint8_t *p, size_t len) {
  it->p = p;
  it->len = len;
  it->off = 0;
}

int ma_tlv_next(ma_tlv_iter *it, uint16_t *tag, const uint8_t **val, uint32_t *vlen) {
  if (it->off == it->len) return 0;
  if (it->len - it->off < 6) return -1;
  uint16_t t = rd16(it->p + it->off);
  uint32_t l = rd32(it->p + it->off + 2);
  if ((size_t)l > it->len - it->off - 6) return -1;
  *tag = t;
  *val = it->p + it->off + 6;
  *vlen = l;
  it->off += 6 + (size_t)l;
  return 1;
}

int ma_get_uint(const uint8_t *val, uint32_t vlen, uint64_t max, uint64_t *out) {
  if (vlen != 1 && vlen != 2 && vlen != 4 && vlen != 8) return -1;
  uint64_t v = 0;
  for (uint32_t i = 0; i < vlen; i++) v |= (uint64_t)val[i] << (8 * i);
  if (v > max) return -1;
  *out = v;
  return 0;
}

void ma_writer_init(ma_writer *w, uint8_t *p, size_t cap) {
  w->p = p;
  w->cap = cap;
  w->len = 0;
  w->overflow = 0;
}

void ma_put_bytes(ma_writer *w, uint16_t tag, const void *val, size_t vlen) {
  if (w->overflow || vlen > 0xFFFFFFFFu || w->cap - w->len < 6 || w->cap - w->len - 6 < vlen) {
    w->overflow = 1;
    return;
  }
  wr16(w->p + w->len, tag);
  wr32(w->p + w->len + 2, (uint32_t)vlen);
  if (vlen) memcpy(w->p + w->len + 6, val, vlen);
  w->len += 6 + vlen;
}

void ma_put_str(ma_writer *w, uint16_t tag, const char *s) { ma_put_bytes(w, tag, s, strlen(s)); }

static void put_le(ma_writer *w, uint16_t tag, uint64_t v, int width) {
  uint8_t b[8];
  for (int i = 0; i < width; i++) b[i] = (uint8_t)(v >> (8 * i));
  ma_put_bytes(w, tag, b, (size_t)width);
}
void ma_put_u8(ma_writer *w, uint16_t tag, uint8_t v) { put_le(w, tag, v, 1); }
void ma_put_u16(ma_writer *w, uint16_t tag, uint16_t v) { put_le(w, tag, v, 2); }
void ma_put_u32(ma_writer *w, uint16_t tag, uint32_t v) { put_le(w, tag, v, 4); }
void ma_put_u64(ma_writer *w, uint16_t tag, uint64_t v) { put_le(w, tag, v, 8); }

/* ---- decoding ---- */

/* Bump allocator over one malloc: room for every string copy plus the pointer arrays. */
typedef struct {
  uint8_t *base;
  size_t cap, used;
} arena;

static void *arena_alloc(arena *a, size_t n, size_t align) {
  size_t off = (a->used + (align - 1)) & ~(align - 1);
  if (off > a->cap || a->cap - off < n) return NULL;
  a->used = off + n;
  return a->base + off;
}

static const char *arena_str(arena *a, const uint8_t *v, uint32_t n) {
  if (memchr(v, 0, n)) return NULL; /* NUL would silently cut a C string */
  char *s = arena_alloc(a, (size_t)n + 1, 1);
  if (!s) return NULL;
  memcpy(s, v, n);
  s[n] = 0;
  return s;
}

#define U8MAX 0xFFull
#define U16MAX 0xFFFFull
#define U32MAX 0xFFFFFFFFull
#define U64MAX 0xFFFFFFFFFFFFFFFFull

#define GETU(dst, max)                                   \
  do {                                                   \
    uint64_t v_;                                         \
    if (ma_get_uint(val, vlen, (max), &v_)) goto bad;    \
    (dst) = (__typeof__(dst))v_;                         \
  } while (0)
#define GETS(dst)                                        \
  do {                                                   \
    if (!((dst) = arena_str(&a, val, vlen))) goto bad;   \
  } while (0)

static int valid_secret_name(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > 128) return 0;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    int alpha = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
    int digit = c >= '0' && c <= '9';
    if (!(alpha || (i > 0 && digit))) return 0;
  }
  return 1;
}

/* The kernel takes any bytes; we take what a hostname is made of, so it is also safe in a shell,
 * a file and a log line. */
static int valid_hostname(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > MA_MAX_HOSTNAME) return 0;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.'))
      return 0;
  }
  return 1;
}

/* Dotted-quad IPv4 (four decimal parts of 1 to 3 digits, each at most 255); the end at *end. */
static int ipv4_prefix(const char *s, const char **end) {
  for (int part = 0; part < 4; part++) {
    if (part > 0 && *s++ != '.') return 0;
    unsigned v = 0, digits = 0;
    while (*s >= '0' && *s <= '9' && digits < 4) v = v * 10 + (unsigned)(*s++ - '0'), digits++;
    if (digits == 0 || digits > 3 || v > 255) return 0;
  }
  *end = s;
  return 1;
}

static int valid_ipv4(const char *s) {
  const char *end;
  return ipv4_prefix(s, &end) && *end == 0;
}

/* "A.B.C.D/N", N from 8 to 30: what a guest's own address on its user network may be. */
static int valid_cidr(const char *s) {
  const char *end;
  if (!ipv4_prefix(s, &end) || *end != '/') return 0;
  end++;
  if (!(end[0] >= '0' && end[0] <= '9')) return 0;
  unsigned n = (unsigned)(end[0] - '0');
  if (end[1] >= '0' && end[1] <= '9') n = n * 10 + (unsigned)(end[1] - '0'), end++;
  return end[1] == 0 && n >= 8 && n <= 30;
}

/* Six lowercase or uppercase hex pairs joined by ':'; a unicast address (the first octet even). */
static int valid_mac(const char *s) {
  if (strlen(s) != 17) return 0;
  for (int i = 0; i < 17; i++) {
    char c = s[i];
    int hex = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
    if (i % 3 == 2 ? c != ':' : !hex) return 0;
  }
  char c = s[1];
  int low = c >= '0' && c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10;
  return (low & 1) == 0;
}

/* A FRESHEN's routes: `A.B.C.D/N@A.B.C.D` entries (N from 0 to 32) joined by ',', at most 16. */
static int valid_routes(const char *s) {
  if (!*s || strlen(s) > 600) return 0;
  for (int n = 0;; n++) {
    const char *end;
    if (n == 16 || !ipv4_prefix(s, &end) || *end++ != '/') return 0;
    unsigned prefix = 0, digits = 0;
    while (*end >= '0' && *end <= '9' && digits < 3) prefix = prefix * 10 + (unsigned)(*end++ - '0'), digits++;
    if (digits == 0 || prefix > 32 || *end++ != '@' || !ipv4_prefix(end, &end)) return 0;
    if (*end == 0) return 1;
    if (*end != ',') return 0;
    s = end + 1;
  }
}

/* A FRESHEN's named-network NICs: `OLDMAC@NEWMAC@A.B.C.D/N` entries (N from 8 to 30, each MAC
 * unicast) joined by ',', at most 8. */
static int valid_nets(const char *s) {
  for (int n = 0;; n++) {
    if (n == 8) return 0;
    char mac[18];
    for (int k = 0; k < 2; k++) {
      if (strlen(s) < 18 || s[17] != '@') return 0;
      memcpy(mac, s, 17);
      mac[17] = 0;
      if (!valid_mac(mac)) return 0;
      s += 18;
    }
    const char *comma = strchr(s, ',');
    size_t len = comma ? (size_t)(comma - s) : strlen(s);
    char cidr[20];
    if (len == 0 || len >= sizeof cidr) return 0;
    memcpy(cidr, s, len);
    cidr[len] = 0;
    if (!valid_cidr(cidr)) return 0;
    if (!comma) return 1;
    s = comma + 1;
  }
}

/* A FRESHEN's broker ports: decimal ports from 1 to 65535 (no leading zero) joined by ',', at most 8. */
static int valid_ports(const char *s) {
  for (int n = 0;; n++) {
    if (n == 8 || !(*s >= '1' && *s <= '9')) return 0;
    unsigned v = 0;
    int digits = 0;
    while (*s >= '0' && *s <= '9' && digits < 6) v = v * 10 + (unsigned)(*s++ - '0'), digits++;
    if (v > 65535) return 0;
    if (*s == 0) return 1;
    if (*s++ != ',') return 0;
  }
}

/* A FRESHEN's resolvers: dotted quads joined by ',', at most 4. */
static int valid_resolvers(const char *s) {
  for (int n = 0;; n++) {
    const char *end;
    if (n == 4 || !ipv4_prefix(s, &end)) return 0;
    if (*end == 0) return 1;
    if (*end != ',') return 0;
    s = end + 1;
  }
}

/* A FRESHEN's disk list: `dev:/mountpoint[:ro|rw]` entries joined by ',', as on the kernel command
 * line; devices vd + letters, mountpoints absolute, made of letters, digits and `/._-`, no `.` or `..`
 * component. */
static int valid_disk(const char *d, const char *end) {
  if (end - d < 5 || d[0] != 'v' || d[1] != 'd') return 0;
  const char *p = d + 2;
  if (!(*p >= 'a' && *p <= 'z')) return 0;
  while (p < end && *p >= 'a' && *p <= 'z') p++;
  if (p >= end || *p++ != ':' || p >= end || *p != '/') return 0;
  const char *mode = memchr(p, ':', (size_t)(end - p));
  const char *mp_end = mode ? mode : end;
  if (mode && !(end - mode == 3 && (!memcmp(mode, ":ro", 3) || !memcmp(mode, ":rw", 3)))) return 0;
  for (const char *c = p; c < mp_end; c++) {
    int ok = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') || *c == '/' ||
             *c == '.' || *c == '_' || *c == '-';
    if (!ok) return 0;
    /* A component that is `.` or `..`. */
    if (*c == '/' && c + 1 < mp_end && c[1] == '.') {
      const char *q = c + 2;
      if (q < mp_end && *q == '.') q++;
      if (q == mp_end || *q == '/') return 0;
    }
  }
  return 1;
}

static int valid_disks(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > 1000) return 0;
  const char *d = s;
  for (;;) {
    const char *comma = strchr(d, ',');
    const char *end = comma ? comma : s + n;
    if (!valid_disk(d, end)) return 0;
    if (!comma) return 1;
    d = comma + 1;
  }
}

int ma_decode(uint8_t type, uint32_t stream, const uint8_t *payload, uint32_t len, ma_msg *m) {
  memset(m, 0, sizeof *m);
  m->type = type;
  m->stream = stream;
  if (!ma_type_known(type)) return MA_E_UNKNOWN_TYPE;
  if (len > MA_MAX_PAYLOAD) return MA_E_TOO_LARGE;
  if (ma_type_is_raw(type)) {
    m->raw = payload;
    m->raw_len = len;
    return MA_E_OK;
  }
  /* First pass: validate the TLV structure and count fields to size the arena. */
  ma_tlv_iter it;
  uint16_t tag;
  const uint8_t *val;
  uint32_t vlen;
  size_t nfields = 0;
  int r;
  ma_tlv_init(&it, payload, len);
  while ((r = ma_tlv_next(&it, &tag, &val, &vlen)) == 1) nfields++;
  if (r < 0) return MA_E_BAD_MESSAGE;

  size_t cap = (size_t)len + nfields + (nfields + 4) * 2 * sizeof(char *) + 64;
  if (type == MA_SECRETS) cap += sizeof(ma_secrets) + 16;
  arena a = {malloc(cap), cap, 0};
  if (!a.base) return MA_E_BAD_MESSAGE;
  m->arena = a.base;

  ma_tlv_init(&it, payload, len);
  switch (type) {
  case MA_HELLO: {
    ma_hello *h = &m->u.hello;
    while (ma_tlv_next(&it, &tag, &val, &vlen) == 1) {
      if (tag == 1) { GETU(h->version, U32MAX); h->has_version = 1; }
      else if (tag == 2) GETS(h->software);
      else if (tag == 3) {
        if (h->ncaps >= MA_MAX_CAPS) goto bad;
        GETS(h->caps[h->ncaps]);
        h->ncaps++;
      } else if (tag == 4) { GETU(h->max_payload, U32MAX); h->has_max_payload = 1; }
      else if (tag == 5) { GETU(h->window, U32MAX); h->has_window = 1; }
    }
    if (!h->has_version) goto bad;
    break;
  }
  case MA_ERROR: {
    ma_error *e = &m->u.error;
    while (ma_tlv_next(&it, &tag, &val, &vlen) == 1) {
      if (tag == 1) GETS(e->code);
      else if (tag == 2) GETS(e->message);
      else if (tag == 3) { GETU(e->err_no, U32MAX); e->has_errno = 1; }
    }
    if (!e->code) goto bad;
    break;
  }
  case MA_OK: {
    ma_ok *k = &m->u.ok;
    while (ma_tlv_next(&it, &tag, &val, &vlen) == 1) {
      if (tag < 1 || tag > 2 * MA_STEPS) continue;
      int step = (tag - 1) / 2;
      if (tag % 2) { GETU(k->outcome[step], MA_OUT_ABSENT); k->has_outcome[step] = 1; }
      else { GETU(k->err_no[step], U32MAX); k->has_errno[step] = 1; }
    }
    break;
  }
  case MA_EOF: case MA_CANCEL: break;
  case MA_WINDOW: {
    int has = 0;
    while (ma_tlv_next(&it, &tag, &val, &vlen) == 1)
      if (tag == 1) { GETU(m->u.window, U32MAX); has = 1; }
    if (!has || m->u.window == 0) goto bad;
    break;
  }
  case MA_EXEC: {
    ma_exec *x = &m->u.exec;
    uint32_t nargv = 0, nenv = 0;
    ma_tlv_iter c;
    ma_tlv_init(&c, payload, len);
    while (ma_tlv_next(&c, &tag, &val, &vlen) == 1) {
      if (tag == 1) nargv++;
      else if (tag == 2) nenv++;
    }
    if (nargv == 0 || nargv > MA_MAX_ARGV || nenv > MA_MAX_ENV) goto bad;
    x->argv = arena_alloc(&a, (nargv + 1) * sizeof(char *), sizeof(char *));
    x->env = arena_alloc(&a, (nenv + 1) * sizeof(char *), sizeof(char *));
    if (!x->argv || !x->env) goto bad;
    while (ma_tlv_next(&it, &tag, &val, &vlen) == 1) {
      switch (tag) {
      case 1: {
        const char *arg;
        GETS(arg);
        x->argv[x->argc++] = (char *)arg;
        break;
      }
      case 2: {
        const char *e;
        GETS(e);
        const char *eq = strchr(e, '=');
        if (!eq || eq == e) goto bad;
        x->env[x->envc++] = (char *)e;
        break;
      }
      case 3: GETS(x->cwd); break;
      case 4: GETS(x->user); break;
      case 5: GETU(x->timeout_ms, U64MAX); x->has_timeout = 1; break;
      case 6: GETU(x->kill_grace_ms, U32MAX); x->has_grace = 1; break;
      case 7: GETU(x->stdout_limit, U64MAX); x->has_stdout_limit = 1; break;
      case 8: GETU(x->stderr_limit, U64MAX); x->has_stderr_limit = 1; break;
      case 9: GETU(x->stdin_open, 1); break;
      case 10: GETU(x->pty_rows, U16MAX); x->has_pty_rows = 1; break;
      case 11: GETU(x->pty_cols, U16MAX); x->has_pty_cols = 1; break;
      default: break;
      }
    }
    x->argv[x->argc] = NULL;
    x->env[x->envc] = NULL;
    if (x->argv[0][0] == 0) goto bad;
    if (x->has_pty_rows != x->has_pty_cols) goto bad;
    break;
  }
  case MA_EXIT: {
    ma_exit *x = &m->u.exit;
    int has_status = 0, has_code = 0;
    while (ma_tlv_next(&it, &tag, &val, &vlen) == 1) {
      switch (tag) {
      case 1: GETU(x->status, 3); has_status = 1; break;
      case 2: GETU(x->exit_code, U32MAX); has_code = 1; break;
      case 3: GETU(x->signal, U32MAX); x->has_signal = 1; break;
      case 4: GETU(x->stdout_truncated, 1); break;
      case 5: GETU(x->stderr_truncated, 1); break;
      case 6: GETU(x->duration_us, U64MAX); x->has_duration = 1; break;
      case 7: GETS(x->error); break;
      case 8: GETU(x->stdout_bytes, U64MAX); x->has_stdout_bytes = 1; break;
      case 9: GETU(x->stderr_bytes, U64MAX); x->has_stderr_bytes = 1; break;
      default: break;
      }
    }
    if (!has_status || !has_code) goto bad;
    break;
  }
  case MA_SIGNAL: {
    int has = 0;
    while (ma_tlv_next(&it, &tag, &val, &vlen) == 1)
      if (tag == 1) { GETU(m->u.signal, 64); has = 1; }
    if (!has || m->u.signal == 0) goto bad;
    break;
  }
  case MA_RESIZE: {
    int hr = 0, hc = 0;
    while (ma_tlv_next(&it, &tag, &val, &vlen) == 1) {
      if (tag == 1) { GETU(m->u.resize.rows, U16MAX); hr = 1; }
      else if (tag == 2) { GETU(m->u.resize.cols, U16MAX); hc = 1; }
    }
    if (!hr || !hc) goto bad;
    break;
  }
  case MA_STARTED: {
    int has = 0;
    while (ma_tlv_next(&it, &tag, &val, &vlen) == 1)
      if (tag == 1) { GETU(m->u.pid, U32MAX); has = 1; }
    if (!has) goto bad;
    break;
  }
  case MA_FILE_PUT: {
    ma_file_put *f = &m->u.put;
    while (ma_tlv_next(&it, &tag, &val, &vlen) == 1) {
      if (tag == 1) GETS(f->path);
      else if (tag == 2) { GETU(f->mode, 07777); f->has_mode = 1; }
      else if (tag == 3) { GETU(f->uid, U32MAX); f->has_uid = 1; }
      else if (tag == 4) { GETU(f->gid, U32MAX); f->has_gid = 1; }
    }
    if (!f->path || f->path[0] != '/' || !f->has_mode) goto bad;
    break;
  }
  case MA_FILE_GET: {
    while (ma_tlv_next(&it, &tag, &val, &vlen) == 1)
      if (tag == 1) GETS(m->u.get_path);
    if (!m->u.get_path || m->u.get_path[0] != '/') goto bad;
    break;
  }
  case MA_FILE_INFO: {
    ma_file_info *f = &m->u.info;
    while (ma_tlv_next(&it, &tag, &val, &vlen) == 1) {
      if (tag == 1) { GETU(f->mode, U32MAX); f->has_mode = 1; }
      else if (tag == 2) { GETU(f->size, U64MAX); f->has_size = 1; }
      else if (tag == 3) { GETU(f->uid, U32MAX); f->has_uid = 1; }
      else if (tag == 4) { GETU(f->gid, U32MAX); f->has_gid = 1; }
    }
    if (!f->has_mode || !f->has_size) goto bad;
    break;
  }
  case MA_SECRETS: {
    ma_secrets *s = arena_alloc(&a, sizeof(ma_secrets), 16);
    if (!s) goto bad;
    memset(s, 0, sizeof *s);
    m->u.secrets = s;
    const char *pending = NULL;
    while (ma_tlv_next(&it, &tag, &val, &vlen) == 1) {
      if (tag == 1) {
        if (pending) goto bad;
        GETS(pending);
        if (!valid_secret_name(pending)) goto bad;
        for (uint32_t i = 0; i < s->count; i++)
          if (strcmp(s->items[i].name, pending) == 0) goto bad;
      } else if (tag == 2) {
        if (!pending || s->count >= MA_MAX_SECRETS) goto bad;
        uint8_t *copy = arena_alloc(&a, vlen ? vlen : 1, 1);
        if (!copy) goto bad;
        if (vlen) memcpy(copy, val, vlen);
        s->items[s->count].name = pending;
        s->items[s->count].value = copy;
        s->items[s->count].value_len = vlen;
        s->count++;
        pending = NULL;
      } else if (tag == 3) {
        uint64_t v;
        if (ma_get_uint(val, vlen, 1, &v) < 0) goto bad;
        s->purge = (uint8_t)v;
      }
    }
    if (pending) goto bad;
    break;
  }
  case MA_FRESHEN: {
    ma_freshen *f = &m->u.freshen;
    while (ma_tlv_next(&it, &tag, &val, &vlen) == 1) {
      switch (tag) {
      case 1: GETU(f->time_sec, (uint64_t)INT64_MAX); f->has_time = 1; break;
      case 2: GETU(f->time_nsec, 999999999u); f->has_nsec = 1; break;
      case 3:
        if (vlen == 0 || vlen > MA_MAX_ENTROPY) goto bad;
        f->entropy = val;
        f->entropy_len = vlen;
        break;
      case 4:
        GETS(f->hostname);
        if (!valid_hostname(f->hostname)) goto bad;
        break;
      case 5: GETU(f->machine_id, 1); break;
      case 6:
        GETS(f->address);
        if (!valid_cidr(f->address)) goto bad;
        break;
      case 7:
        GETS(f->gateway);
        if (!valid_ipv4(f->gateway)) goto bad;
        break;
      case 8:
        GETS(f->mac);
        if (!valid_mac(f->mac)) goto bad;
        break;
      case 10:
        GETS(f->routes);
        if (!valid_routes(f->routes)) goto bad;
        break;
      case 11:
        GETS(f->dns);
        if (!valid_resolvers(f->dns)) goto bad;
        break;
      case 13: GETU(f->model_port, 65535u); if (f->model_port == 0) goto bad; break;
      case 14:
        GETS(f->brokers);
        if (!valid_ports(f->brokers)) goto bad;
        break;
      case 12:
        GETS(f->nets);
        if (!valid_nets(f->nets)) goto bad;
        break;
      case 9:
        GETS(f->disks);
        if (!valid_disks(f->disks)) goto bad;
        break;
      default: break;
      }
    }
    if (f->has_nsec && !f->has_time) goto bad;
    break;
  }
  case MA_SHUTDOWN: {
    while (ma_tlv_next(&it, &tag, &val, &vlen) == 1) {
      if (tag == 1) GETU(m->u.shutdown.action, 1);
      else if (tag == 2) { GETU(m->u.shutdown.grace_ms, U32MAX); m->u.shutdown.has_grace = 1; }
    }
    break;
  }
  default: goto bad;
  }
  return MA_E_OK;
bad:
  free(m->arena);
  m->arena = NULL;
  return MA_E_BAD_MESSAGE;
}

void ma_msg_free(ma_msg *m) {
  free(m->arena);
  m->arena = NULL;
}

/* ---- encoding (canonical: tags ascending, repeated fields in order, widths per the spec) ---- */

long ma_encode(const ma_msg *m, uint8_t *buf, size_t cap) {
  if (ma_type_is_raw(m->type)) {
    if (m->raw_len > cap) return -1;
    if (m->raw_len) memcpy(buf, m->raw, m->raw_len);
    return (long)m->raw_len;
  }
  ma_writer w;
  ma_writer_init(&w, buf, cap);
  switch (m->type) {
  case MA_HELLO: {
    const ma_hello *h = &m->u.hello;
    ma_put_u32(&w, 1, h->version);
    if (h->software) ma_put_str(&w, 2, h->software);
    for (uint32_t i = 0; i < h->ncaps; i++) ma_put_str(&w, 3, h->caps[i]);
    if (h->has_max_payload) ma_put_u32(&w, 4, h->max_payload);
    if (h->has_window) ma_put_u32(&w, 5, h->window);
    break;
  }
  case MA_ERROR:
    ma_put_str(&w, 1, m->u.error.code);
    if (m->u.error.message) ma_put_str(&w, 2, m->u.error.message);
    if (m->u.error.has_errno) ma_put_u32(&w, 3, m->u.error.err_no);
    break;
  case MA_OK:
    for (int i = 0; i < MA_STEPS; i++) {
      if (m->u.ok.has_outcome[i]) ma_put_u8(&w, (uint16_t)(2 * i + 1), m->u.ok.outcome[i]);
      if (m->u.ok.has_errno[i]) ma_put_u32(&w, (uint16_t)(2 * i + 2), m->u.ok.err_no[i]);
    }
    break;
  case MA_EOF: case MA_CANCEL: break;
  case MA_WINDOW: ma_put_u32(&w, 1, m->u.window); break;
  case MA_EXEC: {
    const ma_exec *x = &m->u.exec;
    for (uint32_t i = 0; i < x->argc; i++) ma_put_str(&w, 1, x->argv[i]);
    for (uint32_t i = 0; i < x->envc; i++) ma_put_str(&w, 2, x->env[i]);
    if (x->cwd) ma_put_str(&w, 3, x->cwd);
    if (x->user) ma_put_str(&w, 4, x->user);
    if (x->has_timeout) ma_put_u64(&w, 5, x->timeout_ms);
    if (x->has_grace) ma_put_u32(&w, 6, x->kill_grace_ms);
    if (x->has_stdout_limit) ma_put_u64(&w, 7, x->stdout_limit);
    if (x->has_stderr_limit) ma_put_u64(&w, 8, x->stderr_limit);
    if (x->stdin_open) ma_put_u8(&w, 9, 1);
    if (x->has_pty_rows) ma_put_u16(&w, 10, x->pty_rows);
    if (x->has_pty_cols) ma_put_u16(&w, 11, x->pty_cols);
    break;
  }
  case MA_EXIT: {
    const ma_exit *x = &m->u.exit;
    ma_put_u8(&w, 1, x->status);
    ma_put_u32(&w, 2, x->exit_code);
    if (x->has_signal) ma_put_u32(&w, 3, x->signal);
    if (x->stdout_truncated) ma_put_u8(&w, 4, 1);
    if (x->stderr_truncated) ma_put_u8(&w, 5, 1);
    if (x->has_duration) ma_put_u64(&w, 6, x->duration_us);
    if (x->error) ma_put_str(&w, 7, x->error);
    if (x->has_stdout_bytes) ma_put_u64(&w, 8, x->stdout_bytes);
    if (x->has_stderr_bytes) ma_put_u64(&w, 9, x->stderr_bytes);
    break;
  }
  case MA_SIGNAL: ma_put_u32(&w, 1, m->u.signal); break;
  case MA_RESIZE:
    ma_put_u16(&w, 1, m->u.resize.rows);
    ma_put_u16(&w, 2, m->u.resize.cols);
    break;
  case MA_STARTED: ma_put_u32(&w, 1, m->u.pid); break;
  case MA_FILE_PUT:
    ma_put_str(&w, 1, m->u.put.path);
    ma_put_u32(&w, 2, m->u.put.mode);
    if (m->u.put.has_uid) ma_put_u32(&w, 3, m->u.put.uid);
    if (m->u.put.has_gid) ma_put_u32(&w, 4, m->u.put.gid);
    break;
  case MA_FILE_GET: ma_put_str(&w, 1, m->u.get_path); break;
  case MA_FILE_INFO:
    ma_put_u32(&w, 1, m->u.info.mode);
    ma_put_u64(&w, 2, m->u.info.size);
    if (m->u.info.has_uid) ma_put_u32(&w, 3, m->u.info.uid);
    if (m->u.info.has_gid) ma_put_u32(&w, 4, m->u.info.gid);
    break;
  case MA_SECRETS:
    for (uint32_t i = 0; i < m->u.secrets->count; i++) {
      ma_put_str(&w, 1, m->u.secrets->items[i].name);
      ma_put_bytes(&w, 2, m->u.secrets->items[i].value, m->u.secrets->items[i].value_len);
    }
    if (m->u.secrets->purge) ma_put_u8(&w, 3, 1);
    break;
  case MA_FRESHEN: {
    const ma_freshen *f = &m->u.freshen;
    if (f->has_time) ma_put_u64(&w, 1, f->time_sec);
    if (f->has_nsec) ma_put_u32(&w, 2, f->time_nsec);
    if (f->entropy_len) ma_put_bytes(&w, 3, f->entropy, f->entropy_len);
    if (f->hostname) ma_put_str(&w, 4, f->hostname);
    if (f->machine_id) ma_put_u8(&w, 5, 1);
    if (f->address) ma_put_str(&w, 6, f->address);
    if (f->gateway) ma_put_str(&w, 7, f->gateway);
    if (f->mac) ma_put_str(&w, 8, f->mac);
    if (f->disks) ma_put_str(&w, 9, f->disks);
    if (f->routes) ma_put_str(&w, 10, f->routes);
    if (f->dns) ma_put_str(&w, 11, f->dns);
    if (f->nets) ma_put_str(&w, 12, f->nets);
    if (f->model_port) ma_put_u32(&w, 13, f->model_port);
    if (f->brokers) ma_put_str(&w, 14, f->brokers);
    break;
  }
  case MA_SHUTDOWN:
    ma_put_u8(&w, 1, m->u.shutdown.action);
    if (m->u.shutdown.has_grace) ma_put_u32(&w, 2, m->u.shutdown.grace_ms);
    break;
  default: return -1;
  }
  return w.overflow ? -1 : (long)w.len;
}
