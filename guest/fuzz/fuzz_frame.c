/* libFuzzer target: a byte stream fed through the agent's framing rules (header, oversize skip,
 * frame checks) and every complete frame's payload through ma_decode and ma_encode. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../src/proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  size_t off = 0;
  static uint8_t re[MA_MAX_PAYLOAD];
  while (size - off >= MA_HEADER_SIZE) {
    ma_header h;
    if (ma_parse_header(data + off, &h) != MA_E_OK) return 0; /* connection-level: stop */
    off += MA_HEADER_SIZE;
    int fe = ma_check_header(&h);
    size_t take = h.length <= size - off ? h.length : size - off;
    if (fe == MA_E_OK && take == h.length) {
      /* copy so ASan sees the exact payload bounds */
      uint8_t *p = malloc(h.length ? h.length : 1);
      memcpy(p, data + off, h.length);
      ma_msg m;
      if (ma_decode(h.type, h.stream, p, h.length, &m) == MA_E_OK) {
        long n = ma_encode(&m, re, sizeof re);
        if (n < 0) abort(); /* anything decoded must re-encode */
        ma_msg_free(&m);
      }
      free(p);
    }
    off += take;
  }
  return 0;
}
