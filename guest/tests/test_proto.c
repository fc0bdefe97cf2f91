/* C side of the shared test vectors (guest/vectors/frames.jsonl) plus unit tests of the codec.
 * Prints "N passed, M failed" and exits non-zero on any failure. */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/proto.h"

static int passed, failed;

static void check(int ok, const char *name, const char *fmt, ...) {
  if (ok) {
    passed++;
    return;
  }
  failed++;
  fprintf(stderr, "FAIL %s: ", name);
  va_list ap;
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
}

/* Extracts a JSON string field whose value has no escapes (true of every field we read). */
static int json_str(const char *line, const char *key, char *out, size_t cap) {
  char pat[64];
  snprintf(pat, sizeof pat, "\"%s\":\"", key);
  const char *p = strstr(line, pat);
  if (!p) return -1;
  p += strlen(pat);
  const char *e = strchr(p, '"');
  if (!e || (size_t)(e - p) >= cap) return -1;
  memcpy(out, p, (size_t)(e - p));
  out[e - p] = 0;
  return 0;
}

static int unhex(const char *h, uint8_t *out, size_t cap, size_t *n) {
  size_t l = strlen(h);
  if (l % 2 || l / 2 > cap) return -1;
  for (size_t i = 0; i < l / 2; i++) {
    unsigned v;
    if (sscanf(h + 2 * i, "%2x", &v) != 1) return -1;
    out[i] = (uint8_t)v;
  }
  *n = l / 2;
  return 0;
}

/* ---- the summary format of test/guest/summary.ts ---- */

typedef struct {
  char *p;
  size_t len, cap;
} sb;

static void sb_add(sb *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (b->len + (size_t)n + 1 > b->cap) {
    b->cap = (b->len + (size_t)n + 1) * 2;
    b->p = realloc(b->p, b->cap);
  }
  va_start(ap, fmt);
  vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
}

static void sb_pct(sb *b, const char *k, const char *s) {
  sb_add(b, " %s=", k);
  for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
    if ((*c >= 'A' && *c <= 'Z') || (*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '.' ||
        *c == '_' || *c == '/' || *c == '-')
      sb_add(b, "%c", *c);
    else
      sb_add(b, "%%%02X", *c);
  }
}

static void sb_hex(sb *b, const char *k, const uint8_t *p, size_t n) {
  sb_add(b, " %s=", k);
  for (size_t i = 0; i < n; i++) sb_add(b, "%02x", p[i]);
}

static char *summarize(const ma_msg *m) {
  sb b = {0};
  sb_add(&b, "%s stream=%u", ma_type_name(m->type), m->stream);
  switch (m->type) {
  case MA_PING: case MA_PONG: case MA_STDIN: case MA_STDOUT: case MA_STDERR: case MA_FILE_DATA:
    sb_hex(&b, "data", m->raw, m->raw_len);
    break;
  case MA_HELLO: {
    const ma_hello *h = &m->u.hello;
    sb_add(&b, " version=%u", h->version);
    if (h->software) sb_pct(&b, "software", h->software);
    for (uint32_t i = 0; i < h->ncaps; i++) sb_pct(&b, "capability", h->caps[i]);
    if (h->has_max_payload) sb_add(&b, " max_payload=%u", h->max_payload);
    if (h->has_window) sb_add(&b, " window=%u", h->window);
    break;
  }
  case MA_ERROR:
    sb_pct(&b, "code", m->u.error.code);
    if (m->u.error.message) sb_pct(&b, "message", m->u.error.message);
    if (m->u.error.has_errno) sb_add(&b, " errno=%u", m->u.error.err_no);
    break;
  case MA_WINDOW: sb_add(&b, " increment=%u", m->u.window); break;
  case MA_EXEC: {
    const ma_exec *x = &m->u.exec;
    for (uint32_t i = 0; i < x->argc; i++) sb_pct(&b, "argv", x->argv[i]);
    for (uint32_t i = 0; i < x->envc; i++) sb_pct(&b, "env", x->env[i]);
    if (x->cwd) sb_pct(&b, "cwd", x->cwd);
    if (x->user) sb_pct(&b, "user", x->user);
    if (x->has_timeout) sb_add(&b, " timeout_ms=%llu", (unsigned long long)x->timeout_ms);
    if (x->has_grace) sb_add(&b, " kill_grace_ms=%u", x->kill_grace_ms);
    if (x->has_stdout_limit) sb_add(&b, " stdout_limit=%llu", (unsigned long long)x->stdout_limit);
    if (x->has_stderr_limit) sb_add(&b, " stderr_limit=%llu", (unsigned long long)x->stderr_limit);
    if (x->stdin_open) sb_add(&b, " stdin=1");
    if (x->has_pty_rows) sb_add(&b, " pty_rows=%u", x->pty_rows);
    if (x->has_pty_cols) sb_add(&b, " pty_cols=%u", x->pty_cols);
    break;
  }
  case MA_EXIT: {
    const ma_exit *x = &m->u.exit;
    sb_add(&b, " status=%u exit_code=%u", x->status, x->exit_code);
    if (x->has_signal) sb_add(&b, " signal=%u", x->signal);
    if (x->stdout_truncated) sb_add(&b, " stdout_truncated=1");
    if (x->stderr_truncated) sb_add(&b, " stderr_truncated=1");
    if (x->has_duration) sb_add(&b, " duration_us=%llu", (unsigned long long)x->duration_us);
    if (x->error) sb_pct(&b, "error", x->error);
    if (x->has_stdout_bytes) sb_add(&b, " stdout_bytes=%llu", (unsigned long long)x->stdout_bytes);
    if (x->has_stderr_bytes) sb_add(&b, " stderr_bytes=%llu", (unsigned long long)x->stderr_bytes);
    break;
  }
  case MA_SIGNAL: sb_add(&b, " signal=%u", m->u.signal); break;
  case MA_RESIZE: sb_add(&b, " rows=%u cols=%u", m->u.resize.rows, m->u.resize.cols); break;
  case MA_STARTED: sb_add(&b, " pid=%u", m->u.pid); break;
  case MA_FILE_PUT:
    sb_pct(&b, "path", m->u.put.path);
    sb_add(&b, " mode=%u", m->u.put.mode);
    if (m->u.put.has_uid) sb_add(&b, " uid=%u", m->u.put.uid);
    if (m->u.put.has_gid) sb_add(&b, " gid=%u", m->u.put.gid);
    break;
  case MA_FILE_GET: sb_pct(&b, "path", m->u.get_path); break;
  case MA_FILE_INFO:
    sb_add(&b, " mode=%u size=%llu", m->u.info.mode, (unsigned long long)m->u.info.size);
    if (m->u.info.has_uid) sb_add(&b, " uid=%u", m->u.info.uid);
    if (m->u.info.has_gid) sb_add(&b, " gid=%u", m->u.info.gid);
    break;
  case MA_SECRETS:
    for (uint32_t i = 0; i < m->u.secrets->count; i++) {
      sb_pct(&b, "name", m->u.secrets->items[i].name);
      sb_hex(&b, "value", m->u.secrets->items[i].value, m->u.secrets->items[i].value_len);
    }
    if (m->u.secrets->purge) sb_add(&b, " purge=%u", m->u.secrets->purge);
    break;
  case MA_OK: {
    static const char *steps[] = {"clock", "rng", "hostname", "machine_id", "network", "disks", "nets", "forwarders"};
    for (int i = 0; i < MA_STEPS; i++) {
      if (m->u.ok.has_outcome[i]) sb_add(&b, " %s=%u", steps[i], m->u.ok.outcome[i]);
      if (m->u.ok.has_errno[i]) sb_add(&b, " %s_errno=%u", steps[i], m->u.ok.err_no[i]);
    }
    break;
  }
  case MA_FRESHEN: {
    const ma_freshen *f = &m->u.freshen;
    if (f->has_time) sb_add(&b, " time_sec=%llu", (unsigned long long)f->time_sec);
    if (f->has_nsec) sb_add(&b, " time_nsec=%u", f->time_nsec);
    if (f->entropy_len) sb_hex(&b, "entropy", f->entropy, f->entropy_len);
    if (f->hostname) sb_pct(&b, "hostname", f->hostname);
    if (f->machine_id) sb_add(&b, " machine_id=1");
    if (f->address) sb_pct(&b, "address", f->address);
    if (f->gateway) sb_pct(&b, "gateway", f->gateway);
    if (f->mac) sb_pct(&b, "mac", f->mac);
    if (f->disks) sb_pct(&b, "disks", f->disks);
    if (f->routes) sb_pct(&b, "routes", f->routes);
    if (f->dns) sb_pct(&b, "dns", f->dns);
    if (f->nets) sb_pct(&b, "nets", f->nets);
    if (f->model_port) sb_add(&b, " model_port=%u", f->model_port);
    if (f->brokers) sb_pct(&b, "brokers", f->brokers);
    break;
  }
  case MA_SHUTDOWN:
    sb_add(&b, " action=%u", m->u.shutdown.action);
    if (m->u.shutdown.has_grace) sb_add(&b, " grace_ms=%u", m->u.shutdown.grace_ms);
    break;
  default: break;
  }
  return b.p;
}

/* Judges one whole frame the way the agent does: header, then frame checks, then payload. */
static int judge(const uint8_t *f, size_t n, ma_msg *m) {
  ma_header h;
  if (n < MA_HEADER_SIZE) return MA_E_BAD_MESSAGE;
  int e = ma_parse_header(f, &h);
  if (e) return e;
  if ((e = ma_check_header(&h))) return e;
  if (n != MA_HEADER_SIZE + h.length) return MA_E_BAD_MESSAGE;
  return ma_decode(h.type, h.stream, f + MA_HEADER_SIZE, h.length, m);
}

static void run_vectors(const char *path) {
  FILE *f = fopen(path, "r");
  if (!f) {
    check(0, path, "cannot open");
    return;
  }
  static char line[1 << 16];
  static uint8_t bytes[1 << 15], re[1 << 15];
  int count = 0;
  while (fgets(line, sizeof line, f)) {
    char name[256], hex[1 << 16], summary[8192], error[64];
    if (json_str(line, "name", name, sizeof name) < 0) continue;
    count++;
    size_t n;
    if (json_str(line, "hex", hex, sizeof hex) < 0 || unhex(hex, bytes, sizeof bytes, &n) < 0) {
      check(0, name, "bad hex");
      continue;
    }
    ma_msg m;
    int e = judge(bytes, n, &m);
    if (json_str(line, "reject", error, sizeof error) == 0) {
      check(e != MA_E_OK && strcmp(ma_err_code(e), error) == 0, name, "expected %s, got %s", error, ma_err_code(e));
      if (e == MA_E_OK) ma_msg_free(&m);
      continue;
    }
    if (e != MA_E_OK) {
      check(0, name, "decode failed: %s", ma_err_code(e));
      continue;
    }
    json_str(line, "summary", summary, sizeof summary);
    char *got = summarize(&m);
    check(strcmp(got, summary) == 0, name, "summary\n  want %s\n  got  %s", summary, got);
    free(got);
    if (!strstr(line, "\"canonical\":false")) {
      long len = ma_encode(&m, re + MA_HEADER_SIZE, sizeof re - MA_HEADER_SIZE);
      int same = len >= 0 && (size_t)len + MA_HEADER_SIZE == n;
      if (same) {
        ma_write_header(re, m.type, m.stream, (uint32_t)len);
        same = memcmp(re, bytes, n) == 0;
      }
      check(same, name, "re-encoding differs");
    }
    ma_msg_free(&m);
  }
  fclose(f);
  check(count >= 40, path, "only %d vectors", count);
}

static void unit_tests(void) {
  uint64_t v;
  uint8_t b8[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  check(ma_get_uint(b8, 8, UINT64_MAX, &v) == 0 && v == 0x0807060504030201ull, "uint64", "value");
  check(ma_get_uint(b8, 3, UINT64_MAX, &v) < 0, "uint width 3", "accepted");
  check(ma_get_uint(b8, 0, UINT64_MAX, &v) < 0, "uint width 0", "accepted");
  check(ma_get_uint(b8, 2, 0x100, &v) < 0, "uint over max", "accepted");

  uint8_t small[10];
  ma_writer w;
  ma_writer_init(&w, small, sizeof small);
  ma_put_u32(&w, 1, 7);
  check(!w.overflow && w.len == 10, "writer exact fit", "len %zu", w.len);
  ma_put_u8(&w, 2, 1);
  check(w.overflow && w.len == 10, "writer overflow", "len %zu", w.len);

  /* every prefix of a valid message must be rejected or accepted without reading past the end */
  uint8_t buf[256];
  ma_writer_init(&w, buf, sizeof buf);
  ma_put_str(&w, 1, "sh");
  ma_put_str(&w, 2, "A=1");
  ma_put_u64(&w, 5, 100);
  for (size_t i = 0; i < w.len; i++) {
    uint8_t *copy = malloc(i ? i : 1);
    memcpy(copy, buf, i);
    ma_msg m;
    int e = ma_decode(MA_EXEC, 1, copy, (uint32_t)i, &m);
    if (e == MA_E_OK) ma_msg_free(&m);
    free(copy);
  }
  check(1, "prefixes", "");

  /* FRESHEN at its limits: 4096 bytes of entropy, a 64-byte hostname; one more of either is refused */
  static uint8_t fb[8192];
  static uint8_t noise[MA_MAX_ENTROPY + 1];
  char host[MA_MAX_HOSTNAME + 2];
  for (size_t len = MA_MAX_ENTROPY; len <= MA_MAX_ENTROPY + 1; len++) {
    memset(host, 'h', sizeof host);
    host[len - MA_MAX_ENTROPY + MA_MAX_HOSTNAME] = 0;
    ma_writer_init(&w, fb, sizeof fb);
    ma_put_u64(&w, 1, 1767225600);
    ma_put_bytes(&w, 3, noise, len);
    ma_put_str(&w, 4, "ok");
    ma_msg m;
    int e = ma_decode(MA_FRESHEN, 1, fb, (uint32_t)w.len, &m);
    check((e == MA_E_OK) == (len == MA_MAX_ENTROPY), "freshen entropy limit", "len %zu: %d", len, e);
    if (e == MA_E_OK) {
      check(m.u.freshen.entropy_len == len && m.u.freshen.entropy == fb + 6 + 8 + 6, "freshen entropy in place",
            "not pointing into the payload");
      ma_msg_free(&m);
    }
    ma_writer_init(&w, fb, sizeof fb);
    ma_put_str(&w, 4, host);
    e = ma_decode(MA_FRESHEN, 1, fb, (uint32_t)w.len, &m);
    check((e == MA_E_OK) == (len == MA_MAX_ENTROPY), "freshen hostname limit", "len %zu: %d", strlen(host), e);
    if (e == MA_E_OK) ma_msg_free(&m);
  }

  ma_header h;
  uint8_t hdr[12];
  ma_write_header(hdr, MA_PING, 5, MA_MAX_PAYLOAD);
  check(ma_parse_header(hdr, &h) == MA_E_OK && ma_check_header(&h) == MA_E_OK, "max payload ok", "rejected");
  ma_write_header(hdr, MA_PING, 5, MA_MAX_PAYLOAD + 1);
  check(ma_parse_header(hdr, &h) == MA_E_OK && ma_check_header(&h) == MA_E_TOO_LARGE, "max+1 too large", "accepted");
}

/* The reader over a byte stream fed in `chunk`-sized pieces, as the agent's buffer does. */
static int count_frames(const uint8_t *data, size_t size, size_t chunk, int *fatal, int *refused) {
  static uint8_t buf[MA_HEADER_SIZE + MA_MAX_PAYLOAD + 65536];
  size_t len = 0, fed = 0;
  ma_reader r = {0};
  int frames = 0;
  *fatal = *refused = 0;
  while (fed < size && !*fatal) {
    size_t n = size - fed < chunk ? size - fed : chunk;
    memcpy(buf + len, data + fed, n);
    len += n;
    fed += n;
    size_t off = 0;
    for (;;) {
      size_t used;
      ma_header h;
      const uint8_t *p;
      int err;
      int ev = ma_reader_next(&r, buf + off, len - off, &used, &h, &p, &err);
      off += used;
      if (ev == MA_RD_NEED_MORE) break;
      if (ev == MA_RD_FATAL) {
        *fatal = err;
        break;
      }
      if (ev == MA_RD_FRAME_ERROR) (*refused)++;
      else frames++;
    }
    memmove(buf, buf + off, len - off);
    len -= off;
  }
  return frames;
}

static void reader_tests(void) {
  /* ping(5 bytes), an oversized stdin (2 MiB payload), a frame with flags, ping(0), then garbage */
  size_t big = 2u * 1024 * 1024;
  size_t total = (12 + 5) + (12 + big) + 12 + 12 + 12;
  uint8_t *s = calloc(1, total);
  size_t o = 0;
  ma_write_header(s + o, MA_PING, 1, 5);
  memcpy(s + o + 12, "hello", 5);
  o += 17;
  ma_write_header(s + o, MA_STDIN, 2, (uint32_t)big);
  memset(s + o + 12, 'M', big); /* payload that looks like frame magic must still be skipped */
  o += 12 + big;
  ma_write_header(s + o, MA_PING, 3, 0);
  s[o + 3] = 1;
  o += 12;
  ma_write_header(s + o, MA_PING, 4, 0);
  o += 12;
  memset(s + o, 'x', 12);
  size_t chunks[] = {1, 7, 12, 13, 4096, 65536, 1u << 20};
  for (size_t i = 0; i < sizeof chunks / sizeof chunks[0]; i++) {
    int fatal, refused;
    int frames = count_frames(s, total, chunks[i], &fatal, &refused);
    char name[64];
    snprintf(name, sizeof name, "reader chunk %zu", chunks[i]);
    check(frames == 2 && refused == 2 && fatal == MA_E_BAD_MAGIC, name, "frames %d refused %d fatal %d", frames,
          refused, fatal);
  }
  free(s);
}

int main(int argc, char **argv) {
  reader_tests();
  unit_tests();
  run_vectors(argc > 1 ? argv[1] : "vectors/frames.jsonl");
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
