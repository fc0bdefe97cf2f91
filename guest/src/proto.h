/* Wire format of the guest channel (docs/protocol.md): frame header, TLV fields, message codecs.
 * Pure functions over byte buffers, shared by the agent, the C tests and the fuzzer. */
#ifndef MA_PROTO_H
#define MA_PROTO_H

#include <stddef.h>
#include <stdint.h>

#define MA_PROTOCOL_VERSION 1u
#define MA_MAGIC0 0x4Du
#define MA_MAGIC1 0x41u
#define MA_HEADER_SIZE 12u
#define MA_MAX_PAYLOAD (1024u * 1024u)
#define MA_HARD_LIMIT (16u * 1024u * 1024u)

enum ma_type {
  MA_HELLO = 0x01,
  MA_PING = 0x02,
  MA_PONG = 0x03,
  MA_ERROR = 0x04,
  MA_OK = 0x05,
  MA_WINDOW = 0x06,
  MA_EXEC = 0x10,
  MA_STDIN = 0x11,
  MA_EOF = 0x12,
  MA_STDOUT = 0x13,
  MA_STDERR = 0x14,
  MA_EXIT = 0x15,
  MA_SIGNAL = 0x16,
  MA_RESIZE = 0x17,
  MA_CANCEL = 0x18,
  MA_STARTED = 0x19,
  MA_FILE_PUT = 0x20,
  MA_FILE_GET = 0x21,
  MA_FILE_INFO = 0x22,
  MA_FILE_DATA = 0x23,
  MA_SECRETS = 0x30,
  MA_FRESHEN = 0x31,
  MA_SHUTDOWN = 0x40
};

/* Results of header and payload parsing; strings match docs/protocol.md §7. */
enum ma_err {
  MA_E_OK = 0,
  MA_E_BAD_MAGIC,       /* connection-level */
  MA_E_HARD_TOO_LARGE,  /* connection-level: length > MA_HARD_LIMIT */
  MA_E_TOO_LARGE,       /* frame-level: payload skipped */
  MA_E_BAD_FRAME,       /* frame-level: flags */
  MA_E_UNKNOWN_TYPE,
  MA_E_BAD_MESSAGE
};
const char *ma_err_code(int err);

typedef struct {
  uint8_t type;
  uint8_t flags;
  uint32_t stream;
  uint32_t length;
} ma_header;

/* Parses 12 header bytes. Returns MA_E_OK, MA_E_BAD_MAGIC or MA_E_HARD_TOO_LARGE; oversize,
 * flags and type are judged later by ma_check_header so the caller can skip the payload. */
int ma_parse_header(const uint8_t *p, ma_header *h);
/* Frame-level verdict once the header is known: MA_E_OK, MA_E_TOO_LARGE, MA_E_BAD_FRAME,
 * MA_E_UNKNOWN_TYPE. */
int ma_check_header(const ma_header *h);
void ma_write_header(uint8_t *p, uint8_t type, uint32_t stream, uint32_t length);
int ma_type_known(uint8_t type);
int ma_type_is_raw(uint8_t type);
const char *ma_type_name(uint8_t type);

/* Incremental frame reader over a caller-owned input buffer (the agent's per-connection buffer,
 * the fuzzer's). It holds only the count of oversized payload bytes still to skip. */
typedef struct {
  uint64_t skip;
} ma_reader;
enum {
  MA_RD_NEED_MORE = 0, /* no complete event in the bytes given */
  MA_RD_FRAME,         /* *h and *payload (inside buf) are a whole frame that passed ma_check_header */
  MA_RD_FRAME_ERROR,   /* *h's frame is refused (*err); its payload is consumed or being skipped */
  MA_RD_FATAL          /* *err is MA_E_BAD_MAGIC or MA_E_HARD_TOO_LARGE: no further parsing possible */
};
/* Reports the next event in buf[0..len); *used is how many bytes it consumed (always <= len). */
int ma_reader_next(ma_reader *r, const uint8_t *buf, size_t len, size_t *used, ma_header *h,
                   const uint8_t **payload, int *err);

/* TLV iteration. */
typedef struct {
  const uint8_t *p;
  size_t len;
  size_t off;
} ma_tlv_iter;
void ma_tlv_init(ma_tlv_iter *it, const uint8_t *p, size_t len);
/* 1: a field was returned; 0: end; -1: malformed. */
int ma_tlv_next(ma_tlv_iter *it, uint16_t *tag, const uint8_t **val, uint32_t *vlen);
/* Decodes an unsigned value of 1/2/4/8 bytes that must fit in `max`. 0 ok, -1 bad. */
int ma_get_uint(const uint8_t *val, uint32_t vlen, uint64_t max, uint64_t *out);

/* TLV writer into a caller buffer. Overflow sets `overflow` and writes nothing more. */
typedef struct {
  uint8_t *p;
  size_t cap;
  size_t len;
  int overflow;
} ma_writer;
void ma_writer_init(ma_writer *w, uint8_t *p, size_t cap);
void ma_put_bytes(ma_writer *w, uint16_t tag, const void *val, size_t vlen);
void ma_put_str(ma_writer *w, uint16_t tag, const char *s);
void ma_put_u8(ma_writer *w, uint16_t tag, uint8_t v);
void ma_put_u16(ma_writer *w, uint16_t tag, uint16_t v);
void ma_put_u32(ma_writer *w, uint16_t tag, uint32_t v);
void ma_put_u64(ma_writer *w, uint16_t tag, uint64_t v);

/* Decoded messages. Strings are NUL-terminated copies inside `arena` (one allocation per message,
 * freed with ma_msg_free); field presence is tracked with has_* flags. */
#define MA_MAX_ARGV 4096
#define MA_MAX_ENV 4096
#define MA_MAX_CAPS 64
#define MA_MAX_SECRETS 256
#define MA_MAX_ENTROPY 4096 /* FRESHEN entropy bytes */
#define MA_MAX_HOSTNAME 64  /* the kernel's limit (__NEW_UTS_LEN) */

typedef struct {
  uint32_t version;
  const char *software;
  const char *caps[MA_MAX_CAPS];
  uint32_t ncaps;
  uint32_t max_payload, window;
  int has_version, has_max_payload, has_window;
} ma_hello;

typedef struct {
  const char *code;
  const char *message;
  uint32_t err_no;
  int has_errno;
} ma_error;

typedef struct {
  char **argv; /* NULL-terminated */
  uint32_t argc;
  char **env; /* NULL-terminated */
  uint32_t envc;
  const char *cwd;
  const char *user;
  uint64_t timeout_ms, stdout_limit, stderr_limit;
  uint32_t kill_grace_ms;
  uint8_t stdin_open;
  uint16_t pty_rows, pty_cols;
  int has_timeout, has_grace, has_stdout_limit, has_stderr_limit, has_pty_rows, has_pty_cols;
} ma_exec;

typedef struct {
  uint8_t status;
  uint32_t exit_code, signal;
  uint8_t stdout_truncated, stderr_truncated;
  uint64_t duration_us, stdout_bytes, stderr_bytes;
  const char *error;
  int has_signal, has_duration, has_stdout_bytes, has_stderr_bytes;
} ma_exit;

typedef struct {
  const char *path;
  uint32_t mode, uid, gid;
  int has_mode, has_uid, has_gid;
} ma_file_put;

typedef struct {
  uint32_t mode, uid, gid;
  uint64_t size;
  int has_mode, has_size, has_uid, has_gid;
} ma_file_info;

typedef struct {
  const char *name;
  const uint8_t *value; /* points into the arena */
  uint32_t value_len;
} ma_secret;

typedef struct {
  ma_secret items[MA_MAX_SECRETS];
  uint32_t count;
  uint8_t purge; /* tag 3: wipe every secret already delivered (overwritten, then removed) first */
} ma_secrets;

/* FRESHEN: what a guest resumed from a memory snapshot needs to be its own (docs/protocol.md §5). */
typedef struct {
  uint64_t time_sec;
  uint32_t time_nsec;
  int has_time, has_nsec;
  const uint8_t *entropy; /* points into the caller's payload (not copied, so one wipe clears it) */
  uint32_t entropy_len;   /* 0: absent */
  const char *hostname;
  uint8_t machine_id; /* 1: write a new /etc/machine-id where there is one */
  const char *address; /* eth0's new "A.B.C.D/N" (checked by the decoder) */
  const char *gateway; /* the default route's new gateway "A.B.C.D" */
  const char *mac;     /* eth0's new MAC "xx:xx:xx:xx:xx:xx" */
  const char *routes;  /* extra routes on eth0, "DST/N@GW,…" (checked by the decoder) */
  const char *dns;     /* the resolvers for /etc/resolv.conf, "A.B.C.D,…" (checked by the decoder) */
  const char *disks;   /* extra disks to probe again and mount, "vdb:/mnt:rw,…" (checked by the decoder) */
  const char *nets;    /* NICs on named networks, "OLDMAC@NEWMAC@A.B.C.D/N,…" (checked by the decoder) */
  uint32_t model_port; /* 0: absent; else the guest TCP port the model channel's forwarder serves */
  const char *brokers; /* the broker endpoints' guest TCP ports, "PORT,…" (checked by the decoder) */
} ma_freshen;

/* The steps of a FRESHEN, as reported in its OK: step i has its outcome in tag 2i+1 and the errno
 * of a failure in tag 2i+2. An absent outcome means the step was not asked for. */
enum { MA_STEP_CLOCK, MA_STEP_RNG, MA_STEP_HOSTNAME, MA_STEP_MACHINE_ID, MA_STEP_NETWORK, MA_STEP_DISKS, MA_STEP_NETS, MA_STEP_FORWARDERS, MA_STEPS };
enum { MA_OUT_DONE = 0, MA_OUT_SKIPPED = 1, MA_OUT_FAILED = 2, MA_OUT_ABSENT = 3 };
typedef struct {
  uint8_t outcome[MA_STEPS];
  uint32_t err_no[MA_STEPS];
  uint8_t has_outcome[MA_STEPS], has_errno[MA_STEPS];
} ma_ok;

typedef struct {
  uint8_t type;
  uint32_t stream;
  void *arena;
  /* Raw messages: bytes point into the caller's payload (not copied). */
  const uint8_t *raw;
  uint32_t raw_len;
  union {
    ma_hello hello;
    ma_error error;
    uint32_t window;
    ma_exec exec;
    ma_exit exit;
    uint32_t signal;
    struct {
      uint16_t rows, cols;
    } resize;
    uint32_t pid;
    ma_file_put put;
    const char *get_path;
    ma_file_info info;
    ma_secrets *secrets; /* in the arena */
    ma_freshen freshen;
    ma_ok ok;
    struct {
      uint8_t action;
      uint32_t grace_ms;
      int has_grace;
    } shutdown;
  } u;
} ma_msg;

/* Decodes the payload of a frame whose header passed ma_check_header. Returns MA_E_OK or
 * MA_E_BAD_MESSAGE; on success the caller frees with ma_msg_free. */
int ma_decode(uint8_t type, uint32_t stream, const uint8_t *payload, uint32_t len, ma_msg *out);
void ma_msg_free(ma_msg *m);

/* Encodes a message payload (TLV or raw) into buf; returns its length, or -1 if it does not fit. */
long ma_encode(const ma_msg *m, uint8_t *buf, size_t cap);

#endif
