/* libFuzzer target: the agent's framing path. The input's first byte picks a chunk size; the rest
 * is fed in chunks through ma_reader_next over a buffer managed like a connection's (append, parse,
 * move the remainder down), and every complete frame goes through ma_decode and ma_encode. The
 * same bytes are also checked in one piece, frame by frame. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../src/proto.h"

#define CAP (MA_HEADER_SIZE + MA_MAX_PAYLOAD + 65536u)

static uint8_t re[MA_MAX_PAYLOAD];

static void decode(const ma_header *h, const uint8_t *payload) {
  /* copy so ASan sees the exact payload bounds */
  uint8_t *p = malloc(h->length ? h->length : 1);
  memcpy(p, payload, h->length);
  ma_msg m;
  if (ma_decode(h->type, h->stream, p, h->length, &m) == MA_E_OK) {
    if (ma_encode(&m, re, sizeof re) < 0) abort(); /* anything decoded must re-encode */
    ma_msg_free(&m);
  }
  free(p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size == 0) return 0;
  size_t chunk = (size_t)data[0] * 7 + 1;
  data++;
  size--;

  static uint8_t *buf;
  if (!buf) buf = malloc(CAP);
  size_t len = 0, fed = 0;
  ma_reader r = {0};
  int frames_chunked = 0, fatal = 0;
  while (fed < size && !fatal) {
    size_t n = size - fed < chunk ? size - fed : chunk;
    if (n > CAP - len) n = CAP - len;
    memcpy(buf + len, data + fed, n);
    len += n;
    fed += n;
    size_t off = 0;
    for (;;) {
      size_t used;
      ma_header h;
      const uint8_t *payload;
      int err;
      int ev = ma_reader_next(&r, buf + off, len - off, &used, &h, &payload, &err);
      if (used > len - off) abort();
      off += used;
      if (ev == MA_RD_NEED_MORE) break;
      if (ev == MA_RD_FATAL) {
        fatal = 1;
        break;
      }
      if (ev == MA_RD_FRAME) {
        frames_chunked++;
        decode(&h, payload);
      }
    }
    memmove(buf, buf + off, len - off);
    len -= off;
    /* a partial frame always fits: the buffer can never be full without a complete event */
    if (!fatal && len == CAP) abort();
  }

  /* The same stream in one piece must yield the same number of whole frames. */
  ma_reader whole = {0};
  size_t off = 0;
  int frames_whole = 0;
  for (;;) {
    size_t used;
    ma_header h;
    const uint8_t *payload;
    int err;
    int ev = ma_reader_next(&whole, data + off, size - off, &used, &h, &payload, &err);
    off += used;
    if (ev == MA_RD_NEED_MORE || ev == MA_RD_FATAL) break;
    if (ev == MA_RD_FRAME) frames_whole++;
  }
  if (frames_whole != frames_chunked) abort();
  return 0;
}
