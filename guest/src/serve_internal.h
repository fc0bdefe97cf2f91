/* Internal to the channel server (serve*.c): its limits, connection and stream records, the state
 * the units share, and the functions they call across units. */
#ifndef MA_SERVE_INTERNAL_H
#define MA_SERVE_INTERNAL_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
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

/* The server's state (serve.c). */
extern const ma_serve_config *cfg;
extern conn *conns;
extern int nconns;
extern int listen_fd;
extern int shutdown_requested;
extern int shutdown_action;
extern uint32_t shutdown_grace;
extern int64_t port_retry_at;
extern conn *port_conn;
extern int port_idle; /* the host is not connected: poll() would spin on POLLHUP */

/* serve_conn.c */
int out_reserve(conn *c, size_t n);
size_t out_pending(const conn *c);
void send_frame(conn *c, uint8_t type, uint32_t stream, const void *payload, size_t len);
void send_tlv(conn *c, uint8_t type, uint32_t stream, const ma_writer *w);
void send_error(conn *c, uint32_t stream, const char *code, const char *message, int err_no);
void send_errno(conn *c, uint32_t stream, const char *what, int e);
void send_window(conn *c, uint32_t stream, uint32_t n);
void send_empty(conn *c, uint8_t type, uint32_t stream);
void flush_conn(conn *c);
stream *new_stream(conn *c, uint32_t id, int kind);
void close_fd(int *fd);
void close_exec_fds(stream *s);
void abort_stream(stream *s);
void stream_error(stream *s, const char *code, const char *message);
void free_stream(stream *s);
void end_session(conn *c);
void conn_readable(conn *c);
void port_session_end(conn *c);
void open_port(void);
int open_listener(void);
void accept_conns(void);

/* serve_exec.c */
void exec_start(conn *c, uint32_t id, const ma_exec *x);
void exec_signal_group(stream *s, int sig);
void exec_stop(stream *s, int timed_out);
void exec_read(stream *s, int is_err);
void exec_grant(stream *s, int force);
void exec_write_stdin(stream *s);
void exec_stdin(stream *s, const uint8_t *p, uint32_t n);
void exec_maybe_finish(stream *s, int64_t now);
int exec_can_read(stream *s, int is_err);

/* serve_files.c */
void put_start(conn *c, uint32_t id, const ma_file_put *f);
void put_data(stream *s, const uint8_t *p, uint32_t n);
void put_finish(stream *s);
void get_start(conn *c, uint32_t id, const char *path);
int get_can_pump(stream *s);
void get_pump(stream *s);
void wipe(volatile void *p, size_t n);
void deliver_secrets(conn *c, uint32_t id, const ma_secrets *sec);

/* serve_freshen.c */
void freshen(conn *c, uint32_t id, const ma_freshen *f);

#endif
