/*
 * microagent-egress: the host-side egress mediator of one workspace.
 *
 * It creates its guest-facing sockets inside the workspace's network namespace (setns there, then
 * back), so the guest reaches nothing but these sockets, while every upstream connection it makes
 * leaves from the host's own namespace. TCP arrives by netfilter REDIRECT (original destination
 * from SO_ORIGINAL_DST), other UDP by TPROXY (original destination from IP_RECVORIGDSTADDR), DNS on
 * the gateway address. Each decision is one JSON line appended to the audit log.
 *
 * The classification is on the IP actually dialled, so a name that resolves to an inside address
 * (DNS rebinding) is refused at connect time like the address itself.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <linux/netfilter_ipv4.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_ALLOW 128
#define MAX_PUBLISH 32
#define MAX_NAMES 4096
#define MAX_PENDING 256
#define DNS_UPSTREAM_MS 3000

struct allow {
  char host[256]; /* lowercase name, ".suffix", or empty for a CIDR */
  uint32_t net, mask; /* host order */
  int port; /* 0: any */
  int passthrough; /* allowed, and never handed to the TLS interceptor */
};

struct publish {
  uint32_t host_ip; /* network order */
  int host_port, guest_port;
  int fd;
};

struct name_entry {
  uint32_t ip; /* network order */
  char name[256];
};

struct pending {
  int used;
  uint16_t guest_id;
  struct sockaddr_in guest;
  time_t at;
  char name[256];
  /* The guest's query up to its question, to answer SERVFAIL when the upstream stays silent. */
  uint8_t question[512];
  int question_len;
  int64_t sent_ms;
};

static struct allow allows[MAX_ALLOW];
static int nallow;
static struct publish publishes[MAX_PUBLISH];
static int npublish;
static struct name_entry names[MAX_NAMES];
static int nnames;
static struct pending pendings[MAX_PENDING];
static uint16_t next_id = 1;
static uint32_t host_addrs[256]; /* every IPv4 address of the host, network order */
static int nhost;
static int lock_allowlist;
/* mitm: the TLS interceptor's socket (a host process); allowed TLS flows go there instead of upstream. */
static const char *mitm_socket;
static int log_fd = -1;
static const char *workspace = "";
static uint32_t gateway_ip, guest_ip;
static struct sockaddr_in upstream_dns;
static long max_conns;
static long long max_total_bytes;
static long long max_bps; /* bytes per second, each direction of each flow; 0 = no cap */

static void die(const char *what) {
  fprintf(stderr, "microagent-egress: %s: %s\n", what, strerror(errno));
  exit(1);
}

static void now_iso(char *out, size_t size) {
  struct timeval tv;
  gettimeofday(&tv, NULL);
  struct tm tm;
  gmtime_r(&tv.tv_sec, &tm);
  size_t n = strftime(out, size, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(out + n, size - n, ".%03ldZ", (long)(tv.tv_usec / 1000));
}

/* Appends one record: {"ts":..,"event":..,"workspace":..,<fields>}. One write(2) per record, so
 * records from concurrent children never interleave. */
static void audit(const char *event, const char *fmt, ...) {
  char ts[40], fields[1536], line[2048];
  now_iso(ts, sizeof ts);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(fields, sizeof fields, fmt, ap);
  va_end(ap);
  int n = snprintf(line, sizeof line, "{\"ts\":\"%s\",\"event\":\"%s\",\"workspace\":\"%s\"%s%s}\n", ts, event,
                   workspace, fields[0] ? "," : "", fields);
  if (n > (int)sizeof line - 1) {
    n = sizeof line - 1;
    line[n - 2] = '}';
    line[n - 1] = '\n';
  }
  if (log_fd >= 0 && write(log_fd, line, (size_t)n) < 0) {
    /* The log is the point: a full disk is reported, and the flow still goes by policy. */
    perror("microagent-egress: audit");
  }
}

/* Names come from the guest: only characters that need no JSON escaping are kept. */
static void safe_name(char *s) {
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c >= 'A' && c <= 'Z') *s = (char)(c + 32);
    else if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_')) *s = '?';
  }
}

static int in_net(uint32_t ip, const char *cidr_net, int bits) {
  uint32_t net = ntohl(inet_addr(cidr_net));
  uint32_t mask = bits == 0 ? 0 : 0xffffffffu << (32 - bits);
  return (ip & mask) == (net & mask);
}

static void collect_host_addrs(void);
static int64_t host_addrs_at_ms;

static int64_t monotonic_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* Why an address is "inside", or NULL for the public internet. ip in network order. */
static const char *inside_reason(uint32_t ip_n) {
  uint32_t ip = ntohl(ip_n);
  if (in_net(ip, "127.0.0.0", 8)) return "loopback";
  if (in_net(ip, "0.0.0.0", 8)) return "this-network";
  if (in_net(ip, "10.0.0.0", 8) || in_net(ip, "172.16.0.0", 12) || in_net(ip, "192.168.0.0", 16)) return "private";
  if (in_net(ip, "169.254.0.0", 16)) return "link-local";
  if (in_net(ip, "100.64.0.0", 10)) return "cgnat";
  if (in_net(ip, "224.0.0.0", 4) || in_net(ip, "240.0.0.0", 4)) return "multicast-or-reserved";
  for (int i = 0; i < nhost; i++)
    if (host_addrs[i] == ip_n) return "host";
  /* An address the host gained since the list was read (a new interface, a VPN, a test network) is
   * the host's too: the list is read again (at most every 250 ms) before an address counts as public. */
  if (monotonic_ms() - host_addrs_at_ms >= 250) {
    collect_host_addrs();
    for (int i = 0; i < nhost; i++)
      if (host_addrs[i] == ip_n) return "host";
  }
  return NULL;
}

static int name_matches(const char *pattern, const char *name) {
  if (pattern[0] == '.') {
    size_t pl = strlen(pattern), nl = strlen(name);
    if (strcmp(name, pattern + 1) == 0) return 1;
    return nl > pl && strcmp(name + nl - pl, pattern) == 0;
  }
  return strcmp(pattern, name) == 0;
}

static int name_allowed(const char *name) {
  for (int i = 0; i < nallow; i++)
    if (allows[i].host[0] && name_matches(allows[i].host, name)) return 1;
  return 0;
}

static int addr_listed(uint32_t ip_n, int port, const char *name, int passthrough_only) {
  uint32_t ip = ntohl(ip_n);
  for (int i = 0; i < nallow; i++) {
    if (passthrough_only && !allows[i].passthrough) continue;
    if (allows[i].port != 0 && allows[i].port != port) continue;
    if (allows[i].host[0]) {
      if (name && name_matches(allows[i].host, name)) return 1;
    } else if ((ip & allows[i].mask) == (allows[i].net & allows[i].mask)) {
      return 1;
    }
  }
  return 0;
}

static int addr_allowed(uint32_t ip_n, int port, const char *name) { return addr_listed(ip_n, port, name, 0); }

static const char *name_of(uint32_t ip_n) {
  for (int i = nnames - 1; i >= 0; i--)
    if (names[i].ip == ip_n) return names[i].name;
  return NULL;
}

static void remember(uint32_t ip_n, const char *name) {
  if (nnames == MAX_NAMES) {
    memmove(names, names + MAX_NAMES / 2, sizeof(names[0]) * (MAX_NAMES / 2));
    nnames = MAX_NAMES / 2;
  }
  names[nnames].ip = ip_n;
  snprintf(names[nnames].name, sizeof names[0].name, "%s", name);
  nnames++;
}

static void parse_allow(const char *spec, int passthrough) {
  if (nallow == MAX_ALLOW) return;
  struct allow *a = &allows[nallow];
  memset(a, 0, sizeof *a);
  a->passthrough = passthrough;
  char buf[300];
  snprintf(buf, sizeof buf, "%s", spec);
  char *colon = strrchr(buf, ':');
  if (colon) {
    a->port = atoi(colon + 1);
    *colon = 0;
  }
  char *slash = strchr(buf, '/');
  struct in_addr in;
  if (slash) {
    *slash = 0;
    int bits = atoi(slash + 1);
    if (inet_pton(AF_INET, buf, &in) != 1 || bits < 0 || bits > 32) return;
    a->net = ntohl(in.s_addr);
    a->mask = bits == 0 ? 0 : 0xffffffffu << (32 - bits);
  } else if (inet_pton(AF_INET, buf, &in) == 1) {
    a->net = ntohl(in.s_addr);
    a->mask = 0xffffffffu;
  } else {
    size_t n = strlen(buf);
    while (n > 0 && buf[n - 1] == '.') buf[--n] = 0;
    snprintf(a->host, sizeof a->host, "%s", buf);
    safe_name(a->host);
  }
  nallow++;
}

/* Every IPv4 address of the host's namespace (the mediator is back in it once its sockets exist). */
static void collect_host_addrs(void) {
  struct ifaddrs *list;
  host_addrs_at_ms = monotonic_ms();
  if (getifaddrs(&list) != 0) return;
  nhost = 0;
  for (struct ifaddrs *i = list; i && nhost < 256; i = i->ifa_next)
    if (i->ifa_addr && i->ifa_addr->sa_family == AF_INET)
      host_addrs[nhost++] = ((struct sockaddr_in *)i->ifa_addr)->sin_addr.s_addr;
  freeifaddrs(list);
}

static int set_ns(int fd) {
  return setns(fd, CLONE_NEWNET);
}

static int listen_tcp(uint32_t ip_n, int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) die("socket");
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = ip_n};
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0) die("bind tcp");
  /* The kernel caps this at net.core.somaxconn. */
  if (listen(fd, 4096) != 0) die("listen");
  return fd;
}

static int bind_udp(uint32_t ip_n, int port, int transparent) {
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) die("socket");
  int one = 1;
  if (transparent) {
    if (setsockopt(fd, SOL_IP, IP_TRANSPARENT, &one, sizeof one) != 0) die("IP_TRANSPARENT");
    if (setsockopt(fd, SOL_IP, IP_RECVORIGDSTADDR, &one, sizeof one) != 0) die("IP_RECVORIGDSTADDR");
  }
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = ip_n};
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0) die("bind udp");
  return fd;
}

static double seconds_since(const struct timespec *t0) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)(t.tv_sec - t0->tv_sec) + (double)(t.tv_nsec - t0->tv_nsec) / 1e9;
}

/* Shaping to max_bps: after `sent` bytes one way since t0, waits until they fit the rate. The sender
   is slowed (TCP's window closes behind the unread socket buffer), never cut off. */
static int shape(const struct timespec *t0, long long sent) {
  if (max_bps <= 0) return 0;
  double due = (double)sent / (double)max_bps - seconds_since(t0);
  if (due <= 0) return 0;
  struct timespec d = {.tv_sec = (time_t)due, .tv_nsec = (long)((due - (double)(time_t)due) * 1e9)};
  while (nanosleep(&d, &d) != 0 && errno == EINTR) {
  }
  return 1;
}

/* Copies both ways until both sides are done; returns bytes guest->upstream and back. `throttled` is
   set once a direction had to wait for max_bps. */
static void splice_fds(int a, int b, long long *a_to_b, long long *b_to_a, int *capped, int *throttled) {
  char buf[65536];
  /* Under a low rate cap, a read is at most a quarter second's worth, so each wait is short. */
  size_t chunk = sizeof buf;
  if (max_bps > 0 && max_bps / 4 < (long long)chunk) chunk = max_bps / 4 > 512 ? (size_t)(max_bps / 4) : 512;
  struct timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  int a_open = 1, b_open = 1;
  while (a_open || b_open) {
    struct pollfd p[2] = {{.fd = a, .events = a_open ? POLLIN : 0}, {.fd = b, .events = b_open ? POLLIN : 0}};
    if (poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    for (int i = 0; i < 2; i++) {
      if (!(p[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      int from = i == 0 ? a : b, to = i == 0 ? b : a;
      ssize_t n = read(from, buf, chunk);
      if (n <= 0) {
        shutdown(to, SHUT_WR);
        if (i == 0) a_open = 0;
        else b_open = 0;
        if (n < 0) return;
        continue;
      }
      for (ssize_t off = 0; off < n;) {
        ssize_t w = write(to, buf + off, (size_t)(n - off));
        if (w <= 0) return;
        off += w;
      }
      if (i == 0) *a_to_b += n;
      else *b_to_a += n;
      if (shape(&t0, i == 0 ? *a_to_b : *b_to_a)) *throttled = 1;
      if (max_total_bytes > 0 && *a_to_b + *b_to_a > max_total_bytes) {
        *capped = 1;
        return;
      }
    }
  }
}

static int dial(uint32_t ip_n, int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = ip_n};
  struct timeval tv = {.tv_sec = 15};
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
    close(fd);
    return -1;
  }
  tv.tv_sec = 0;
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

/* Guest connections being served (children of serve_guest_tcp), counted by the main loop only. */
static long active_conns;
/* A published port's child exits with this, so its end does not count as a guest connection's. */
#define PUBLISH_EXIT 42

/* An accepted guest connection and what classifying it found. */
struct flow {
  struct sockaddr_in dst;
  char dst_s[INET_ADDRSTRLEN];
  int port;
  int listed;
  int passthrough;
  char name[256]; /* the name it was looked up by, or "-" */
  char host_field[300];
};

/* Classifies a guest connection in the main loop, before any child exists: its original destination,
 * the inside-deny, the locked allowlist and the connection cap. A refusal is audited here and the
 * connection closed by the caller, so a flood of refused connections costs no process each (a guest
 * that opened 10000 at once made the mediator fork 10000 times, fall behind its listen backlog, and
 * lose connections the kernel dropped unaudited). Returns 1 for a flow to serve. */
static int classify_guest_tcp(int client, struct flow *f) {
  socklen_t len = sizeof f->dst;
  if (getsockopt(client, SOL_IP, SO_ORIGINAL_DST, &f->dst, &len) != 0) {
    audit("egress_deny", "\"proto\":\"tcp\",\"signal\":\"denied\",\"reason\":\"no original destination\"");
    return 0;
  }
  inet_ntop(AF_INET, &f->dst.sin_addr, f->dst_s, sizeof f->dst_s);
  f->port = ntohs(f->dst.sin_port);
  const char *name = name_of(f->dst.sin_addr.s_addr);
  f->host_field[0] = 0;
  if (name) snprintf(f->host_field, sizeof f->host_field, ",\"host\":\"%s\"", name);
  snprintf(f->name, sizeof f->name, "%s", name ? name : "-");
  f->passthrough = addr_listed(f->dst.sin_addr.s_addr, f->port, name, 1);
  const char *inside = inside_reason(f->dst.sin_addr.s_addr);
  f->listed = addr_allowed(f->dst.sin_addr.s_addr, f->port, name);
  if (inside && !f->listed) {
    audit("egress_internal_deny", "\"proto\":\"tcp\",\"dst\":\"%s:%d\"%s,\"internal\":true,\"class\":\"%s\",\"signal\":\"denied\"",
          f->dst_s, f->port, f->host_field, inside);
    return 0;
  }
  if (lock_allowlist && !f->listed) {
    audit("egress_deny", "\"proto\":\"tcp\",\"dst\":\"%s:%d\"%s,\"signal\":\"%s\"", f->dst_s, f->port, f->host_field,
          name ? "denied" : "direct-ip-no-sni");
    return 0;
  }
  if (max_conns > 0 && active_conns >= max_conns) {
    audit("egress_cap_exceeded", "\"proto\":\"tcp\",\"dst\":\"%s:%d\"%s,\"cap\":\"max-conns\",\"limit\":%ld", f->dst_s,
          f->port, f->host_field, max_conns);
    return 0;
  }
  return 1;
}

/* Whether the guest opens with a TLS handshake record. Clients speak first in TLS and HTTP; a
 * protocol whose server speaks first (SSH, SMTP) sends nothing for a second and is spliced as it is. */
static int opens_with_tls(int client) {
  struct pollfd p = {.fd = client, .events = POLLIN};
  if (poll(&p, 1, 1000) != 1) return 0;
  uint8_t first;
  return recv(client, &first, 1, MSG_PEEK) == 1 && first == 0x16;
}

/* The TLS interceptor, told which address the guest dialled (it dials exactly that, never a name)
 * and the name the guest looked up; -1 when it cannot be reached. */
static int dial_interceptor(const struct flow *f) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  snprintf(sa.sun_path, sizeof sa.sun_path, "%s", mitm_socket);
  char preamble[320];
  int n = snprintf(preamble, sizeof preamble, "%s %d %s\n", f->dst_s, f->port, f->name);
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || write(fd, preamble, (size_t)n) != n) {
    close(fd);
    return -1;
  }
  return fd;
}

/* An allowed guest connection, in its own child: dial from the host (or, for TLS under mitm, hand it
 * to the interceptor), splice, audit the close. */
static void serve_guest_tcp(int client, const struct flow *f) {
  int intercepted = mitm_socket && !f->passthrough && opens_with_tls(client);
  int upstream = intercepted ? dial_interceptor(f) : dial(f->dst.sin_addr.s_addr, f->port);
  if (upstream < 0) {
    audit("egress_deny", "\"proto\":\"tcp\",\"dst\":\"%s:%d\"%s,\"signal\":\"denied\",\"reason\":\"%s: %s\"",
          f->dst_s, f->port, f->host_field, intercepted ? "the TLS interceptor is unreachable" : "dial failed",
          strerror(errno));
    _exit(0);
  }
  audit("egress_allow", "\"proto\":\"tcp\",\"dst\":\"%s:%d\"%s%s%s", f->dst_s, f->port, f->host_field,
        f->listed ? "" : ",\"unlisted\":true", intercepted ? ",\"mitm\":true" : "");
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  long long out = 0, in = 0;
  int capped = 0, throttled = 0;
  splice_fds(client, upstream, &out, &in, &capped, &throttled);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  long ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
  if (capped)
    audit("egress_cap_exceeded", "\"proto\":\"tcp\",\"dst\":\"%s:%d\"%s,\"cap\":\"max-total-bytes\",\"limit\":%lld",
          f->dst_s, f->port, f->host_field, max_total_bytes);
  if (throttled)
    audit("egress_cap_exceeded",
          "\"proto\":\"tcp\",\"dst\":\"%s:%d\"%s,\"cap\":\"max-bps\",\"limit\":%lld,\"action\":\"throttled\"", f->dst_s,
          f->port, f->host_field, max_bps);
  audit("egress_close", "\"proto\":\"tcp\",\"dst\":\"%s:%d\"%s,\"bytes_out\":%lld,\"bytes_in\":%lld,\"duration_ms\":%ld",
        f->dst_s, f->port, f->host_field, out, in, ms);
  _exit(0);
}

/* A published port: the host side accepted; the guest side is dialled from inside the namespace. */
static void serve_publish(int client, int ns_fd, int host_ns_fd, int guest_port) {
  if (set_ns(ns_fd) != 0) _exit(PUBLISH_EXIT);
  int fd = dial(guest_ip, guest_port);
  set_ns(host_ns_fd);
  if (fd < 0) _exit(PUBLISH_EXIT);
  long long a = 0, b = 0;
  int capped = 0, throttled = 0;
  /* Inbound publishing is not egress: no caps (this is the flow's own child, so nothing is restored). */
  max_total_bytes = 0;
  max_bps = 0;
  splice_fds(client, fd, &a, &b, &capped, &throttled);
  _exit(PUBLISH_EXIT);
}

/* ---------- DNS ---------- */

/* Reads the question name at off; returns the offset after it, or -1. */
static int read_qname(const uint8_t *msg, int len, int off, char *out, size_t size) {
  size_t o = 0;
  while (off < len) {
    int l = msg[off];
    if (l == 0) {
      if (o == 0) out[o++] = '.'; /* the root */
      else o--; /* drops the trailing dot */
      out[o] = 0;
      return off + 1;
    }
    if ((l & 0xc0) != 0 || off + 1 + l > len || o + (size_t)l + 2 > size) return -1;
    memcpy(out + o, msg + off + 1, (size_t)l);
    o += (size_t)l;
    out[o++] = '.';
    off += 1 + l;
  }
  return -1;
}

/* Skips a possibly compressed name. */
static int skip_name(const uint8_t *msg, int len, int off) {
  while (off < len) {
    int l = msg[off];
    if (l == 0) return off + 1;
    if ((l & 0xc0) == 0xc0) return off + 2;
    off += 1 + l;
  }
  return -1;
}

static const char *qtype_name(int t) {
  switch (t) {
  case 1: return "A";
  case 28: return "AAAA";
  case 5: return "CNAME";
  case 15: return "MX";
  case 16: return "TXT";
  case 64: return "SVCB";
  case 65: return "HTTPS";
  default: return "other";
  }
}

static void dns_reply_rcode(int fd, const uint8_t *q, int qlen, int qend, struct sockaddr_in *to, int rcode) {
  uint8_t r[512];
  if (qend > (int)sizeof r) qend = sizeof r;
  memcpy(r, q, (size_t)qend);
  r[2] = (uint8_t)(0x80 | (q[2] & 0x79)); /* QR, opcode, RD */
  r[3] = (uint8_t)(0x80 | rcode); /* RA */
  r[6] = r[7] = r[8] = r[9] = r[10] = r[11] = 0;
  (void)qlen;
  sendto(fd, r, (size_t)qend, 0, (struct sockaddr *)to, sizeof *to);
}

static void handle_dns_query(int dns_fd, int up_fd) {
  uint8_t msg[1500];
  struct sockaddr_in from;
  socklen_t fl = sizeof from;
  ssize_t n = recvfrom(dns_fd, msg, sizeof msg, 0, (struct sockaddr *)&from, &fl);
  if (n < 17) return;
  int qd = (msg[4] << 8) | msg[5];
  if (qd != 1) return;
  char name[256];
  int end = read_qname(msg, (int)n, 12, name, sizeof name);
  if (end < 0 || end + 4 > n) return;
  safe_name(name);
  int qtype = (msg[end] << 8) | msg[end + 1];
  end += 4;
  if (lock_allowlist && !name_allowed(name)) {
    audit("egress_dns_deny", "\"name\":\"%s\",\"qtype\":\"%s\",\"rcode\":\"REFUSED\",\"signal\":\"denied\"", name,
          qtype_name(qtype));
    dns_reply_rcode(dns_fd, msg, (int)n, end, &from, 5);
    return;
  }
  if (qtype == 65 || qtype == 64) {
    /* HTTPS/SVCB records carry ECH keys that would hide the name a connection goes to. */
    dns_reply_rcode(dns_fd, msg, (int)n, end, &from, 0);
    audit("egress_dns_allow", "\"name\":\"%s\",\"qtype\":\"%s\",\"stripped\":true", name, qtype_name(qtype));
    return;
  }
  int slot = -1;
  time_t now = time(NULL);
  for (int i = 0; i < MAX_PENDING; i++) {
    int k = (next_id + i) % MAX_PENDING;
    if (!pendings[k].used || now - pendings[k].at > 10) {
      slot = k;
      break;
    }
  }
  if (slot < 0) {
    dns_reply_rcode(dns_fd, msg, (int)n, end, &from, 2);
    return;
  }
  next_id = (uint16_t)(slot + 1);
  struct pending *p = &pendings[slot];
  p->used = 1;
  p->guest_id = (uint16_t)((msg[0] << 8) | msg[1]);
  p->guest = from;
  p->at = now;
  snprintf(p->name, sizeof p->name, "%s", name);
  p->question_len = end < (int)sizeof p->question ? end : (int)sizeof p->question;
  memcpy(p->question, msg, (size_t)p->question_len);
  p->sent_ms = monotonic_ms();
  /* The upstream id is the slot, plus random high bits against off-path spoofing. */
  uint16_t id = (uint16_t)(((unsigned)rand() & 0xff00u) | (unsigned)slot);
  msg[0] = (uint8_t)(id >> 8);
  msg[1] = (uint8_t)(id & 0xff);
  /* The high byte of the upstream id is kept in the otherwise unused sin_zero to match the reply. */
  p->guest.sin_zero[0] = (char)(id >> 8);
  sendto(up_fd, msg, (size_t)n, 0, (struct sockaddr *)&upstream_dns, sizeof upstream_dns);
  audit("egress_dns_allow", "\"name\":\"%s\",\"qtype\":\"%s\"%s", name, qtype_name(qtype),
        nallow > 0 && !name_allowed(name) ? ",\"unlisted\":true" : "");
}

static void handle_dns_reply(int dns_fd, int up_fd) {
  uint8_t msg[4096];
  struct sockaddr_in from;
  socklen_t fl = sizeof from;
  ssize_t n = recvfrom(up_fd, msg, sizeof msg, 0, (struct sockaddr *)&from, &fl);
  if (n < 12) return;
  if (from.sin_addr.s_addr != upstream_dns.sin_addr.s_addr || from.sin_port != upstream_dns.sin_port) return;
  uint16_t id = (uint16_t)((msg[0] << 8) | msg[1]);
  int slot = id & 0xff;
  struct pending *p = &pendings[slot];
  if (!p->used || (uint8_t)p->guest.sin_zero[0] != (uint8_t)(id >> 8)) return;
  p->used = 0;
  /* Remember every A record's address under the asked name, so connections are matched to names. */
  int qd = (msg[4] << 8) | msg[5], an = (msg[6] << 8) | msg[7];
  int off = 12;
  for (int i = 0; i < qd && off > 0; i++) {
    off = skip_name(msg, (int)n, off);
    if (off > 0) off += 4;
  }
  for (int i = 0; i < an && off > 0 && off < n; i++) {
    off = skip_name(msg, (int)n, off);
    if (off < 0 || off + 10 > n) break;
    int type = (msg[off] << 8) | msg[off + 1];
    int rdlen = (msg[off + 8] << 8) | msg[off + 9];
    off += 10;
    if (off + rdlen > n) break;
    if (type == 1 && rdlen == 4) {
      uint32_t ip;
      memcpy(&ip, msg + off, 4);
      remember(ip, p->name);
    }
    off += rdlen;
  }
  msg[0] = (uint8_t)(p->guest_id >> 8);
  msg[1] = (uint8_t)(p->guest_id & 0xff);
  struct sockaddr_in to = p->guest;
  memset(to.sin_zero, 0, sizeof to.sin_zero);
  sendto(dns_fd, msg, (size_t)n, 0, (struct sockaddr *)&to, sizeof to);
}

/* A query the upstream left unanswered for DNS_UPSTREAM_MS gets SERVFAIL, as a recursive resolver
 * answers when it gives up, so the guest's resolver moves on instead of waiting out its timeouts. */
static void expire_dns(int dns_fd) {
  int64_t now = monotonic_ms();
  for (int k = 0; k < MAX_PENDING; k++) {
    struct pending *p = &pendings[k];
    if (!p->used || now - p->sent_ms < DNS_UPSTREAM_MS) continue;
    p->used = 0;
    p->question[0] = (uint8_t)(p->guest_id >> 8);
    p->question[1] = (uint8_t)(p->guest_id & 0xff);
    struct sockaddr_in to = p->guest;
    memset(to.sin_zero, 0, sizeof to.sin_zero);
    dns_reply_rcode(dns_fd, p->question, p->question_len, p->question_len, &to, 2);
  }
}

/* Other UDP (TPROXY): refused, with the reference's signals. */
static void handle_udp_sink(int fd) {
  uint8_t buf[2048];
  char control[256];
  struct sockaddr_in from;
  struct iovec iov = {.iov_base = buf, .iov_len = sizeof buf};
  struct msghdr mh = {.msg_name = &from, .msg_namelen = sizeof from, .msg_iov = &iov, .msg_iovlen = 1,
                      .msg_control = control, .msg_controllen = sizeof control};
  if (recvmsg(fd, &mh, 0) < 0) return;
  struct sockaddr_in dst = {0};
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
    if (c->cmsg_level == SOL_IP && c->cmsg_type == IP_ORIGDSTADDR) memcpy(&dst, CMSG_DATA(c), sizeof dst);
  char dst_s[INET_ADDRSTRLEN];
  inet_ntop(AF_INET, &dst.sin_addr, dst_s, sizeof dst_s);
  int port = ntohs(dst.sin_port);
  const char *signal = port == 53 ? "foreign-resolver" : port == 443 ? "quic-udp443" : "denied";
  const char *inside = inside_reason(dst.sin_addr.s_addr);
  if (inside)
    audit("egress_udp_internal_deny", "\"proto\":\"udp\",\"dst\":\"%s:%d\",\"internal\":true,\"class\":\"%s\",\"signal\":\"%s\"",
          dst_s, port, inside, signal);
  else
    audit("egress_udp_deny", "\"proto\":\"udp\",\"dst\":\"%s:%d\",\"signal\":\"%s\"", dst_s, port, signal);
}

/* The mediator lives as long as the VM: once the VMM named by the pid file is gone (or never came
 * within the grace period), it removes the namespace's name and exits, and the namespace with the
 * tap in it goes with the last reference. The name is removed only while it still names this
 * mediator's namespace: a later start of the same workspace may have made a new one under it. */
static const char *vmm_pidfile, *netns_path;
static time_t started_at;
static pid_t vmm_pid;
static struct stat own_ns;

static int names_own_namespace(void) {
  struct stat now;
  return stat(netns_path, &now) == 0 && now.st_dev == own_ns.st_dev && now.st_ino == own_ns.st_ino;
}

static void finish(void) {
  if (netns_path && strncmp(netns_path, "/run/netns/", 11) == 0 && names_own_namespace()) {
    umount2(netns_path, MNT_DETACH);
    unlink(netns_path);
  }
  audit("egress_mediator_stop", "");
  /* Open flows end with the VM (the children share the mediator's process group). */
  signal(SIGTERM, SIG_IGN);
  kill(0, SIGTERM);
  exit(0);
}

/* Gone, or a zombie nobody reaped yet (an init that does not reap keeps a killed VMM's entry). */
static int vmm_gone(pid_t pid) {
  if (kill(pid, 0) != 0) return errno == ESRCH;
  char path[64], buf[512];
  snprintf(path, sizeof path, "/proc/%ld/stat", (long)pid);
  FILE *f = fopen(path, "r");
  if (!f) return 1;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  /* The state follows the command name's closing parenthesis. */
  char *end = strrchr(buf, ')');
  return end != NULL && end[1] == ' ' && (end[2] == 'Z' || end[2] == 'X');
}

static void watch_vmm(void) {
  if (!vmm_pidfile) return;
  if (vmm_pid == 0) {
    FILE *f = fopen(vmm_pidfile, "r");
    if (f) {
      long pid = 0;
      if (fscanf(f, "%ld", &pid) == 1 && pid > 0) vmm_pid = (pid_t)pid;
      fclose(f);
    }
    if (vmm_pid == 0 && time(NULL) - started_at > 600) finish();
    return;
  }
  if (vmm_gone(vmm_pid)) finish();
}

static void usage(void) {
  fprintf(stderr,
          "usage: microagent-egress --netns PATH --workspace NAME --gateway IP --guest IP --log FILE\n"
          "       [--tcp-port N] [--udp-port N] [--dns-upstream IP[:PORT]] [--allow SPEC]... [--lock-allowlist]\n"
          "       [--publish HOSTIP:HOSTPORT:GUESTPORT]... [--max-conns N] [--max-total-bytes N] [--max-bps N]\n"
          "       [--vmm-pidfile FILE] [--mitm-socket PATH] [--passthrough SPEC]...\n");
  exit(2);
}

static void default_upstream(void) {
  FILE *f = fopen("/etc/resolv.conf", "r");
  char line[256], ip[64];
  upstream_dns.sin_family = AF_INET;
  upstream_dns.sin_port = htons(53);
  upstream_dns.sin_addr.s_addr = inet_addr("127.0.0.1");
  if (!f) return;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "nameserver %63s", ip) == 1 && inet_pton(AF_INET, ip, &upstream_dns.sin_addr) == 1) break;
  fclose(f);
}

/* Only wakes the main loop's poll (EINTR); the children are reaped there. Counting in the handler
 * lost decrements that landed inside the loop's `active_conns++` (a read-modify-write), so after a
 * flood of connections the count stayed above --max-conns and every later connection was refused. */
static void on_child(int sig) {
  (void)sig;
}

static void reap_children(void) {
  int saved = errno, status;
  while (waitpid(-1, &status, WNOHANG) > 0)
    if (!(WIFEXITED(status) && WEXITSTATUS(status) == PUBLISH_EXIT)) active_conns--;
  errno = saved;
}

/* IPv6 off on every interface of the workspace namespace (the tap among them; "default" for any made
 * later): mediation is v4 only and ip6tables drops v6 anyway. Called inside the namespace, whose
 * /proc/sys/net this process then sees; saves the runtime a sysctl process on every start. A kernel
 * without IPv6 has nothing to turn off. */
static void disable_ipv6(void) {
  static const char *const knobs[] = {"/proc/sys/net/ipv6/conf/all/disable_ipv6",
                                      "/proc/sys/net/ipv6/conf/default/disable_ipv6"};
  for (size_t i = 0; i < sizeof knobs / sizeof knobs[0]; i++) {
    int fd = open(knobs[i], O_WRONLY | O_CLOEXEC);
    if (fd < 0) {
      if (errno != ENOENT) fprintf(stderr, "egress: %s: %s\n", knobs[i], strerror(errno));
      continue;
    }
    if (write(fd, "1", 1) != 1) fprintf(stderr, "egress: %s: %s\n", knobs[i], strerror(errno));
    close(fd);
  }
}

int main(int argc, char **argv) {
  const char *netns = NULL, *log_path = NULL, *gateway = NULL, *guest = NULL;
  int tcp_port = 15001, udp_port = 15002;
  default_upstream();
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--lock-allowlist")) {
      lock_allowlist = 1;
      continue;
    }
    if (!v) usage();
    i++;
    if (!strcmp(a, "--netns")) netns = v;
    else if (!strcmp(a, "--vmm-pidfile")) vmm_pidfile = v;
    else if (!strcmp(a, "--workspace")) workspace = v;
    else if (!strcmp(a, "--log")) log_path = v;
    else if (!strcmp(a, "--gateway")) gateway = v;
    else if (!strcmp(a, "--guest")) guest = v;
    else if (!strcmp(a, "--tcp-port")) tcp_port = atoi(v);
    else if (!strcmp(a, "--udp-port")) udp_port = atoi(v);
    else if (!strcmp(a, "--allow")) parse_allow(v, 0);
    else if (!strcmp(a, "--passthrough")) parse_allow(v, 1);
    else if (!strcmp(a, "--mitm-socket")) mitm_socket = v;
    else if (!strcmp(a, "--max-conns")) max_conns = atol(v);
    else if (!strcmp(a, "--max-total-bytes")) max_total_bytes = atoll(v);
    else if (!strcmp(a, "--max-bps")) max_bps = atoll(v);
    else if (!strcmp(a, "--dns-upstream")) {
      char buf[64];
      snprintf(buf, sizeof buf, "%s", v);
      char *c = strchr(buf, ':');
      upstream_dns.sin_port = htons(53);
      if (c) {
        *c = 0;
        upstream_dns.sin_port = htons((uint16_t)atoi(c + 1));
      }
      if (inet_pton(AF_INET, buf, &upstream_dns.sin_addr) != 1) usage();
    } else if (!strcmp(a, "--publish")) {
      char buf[64];
      snprintf(buf, sizeof buf, "%s", v);
      char *c1 = strchr(buf, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
      if (!c2 || npublish == MAX_PUBLISH) usage();
      *c1 = *c2 = 0;
      struct publish *p = &publishes[npublish++];
      p->host_ip = inet_addr(buf);
      p->host_port = atoi(c1 + 1);
      p->guest_port = atoi(c2 + 1);
    } else usage();
  }
  if (!netns || !log_path || !gateway || !guest) usage();
  netns_path = netns;
  started_at = time(NULL);
  gateway_ip = inet_addr(gateway);
  guest_ip = inet_addr(guest);
  srand((unsigned)(time(NULL) ^ getpid()));
  log_fd = open(log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  if (log_fd < 0) die(log_path);
  collect_host_addrs();

  int host_ns = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
  int ns = open(netns, O_RDONLY | O_CLOEXEC);
  if (host_ns < 0 || ns < 0 || fstat(ns, &own_ns) != 0) die("open namespace");
  for (int i = 0; i < npublish; i++) publishes[i].fd = listen_tcp(publishes[i].host_ip, publishes[i].host_port);
  int up_fd = bind_udp(INADDR_ANY, 0, 0);
  if (set_ns(ns) != 0) die("setns into the workspace namespace");
  disable_ipv6();
  int tcp_fd = listen_tcp(INADDR_ANY, tcp_port);
  int dns_fd = bind_udp(gateway_ip, 53, 0);
  int sink_fd = bind_udp(INADDR_ANY, udp_port, 1);
  if (set_ns(host_ns) != 0) die("setns back to the host namespace");

  struct sigaction sa = {.sa_handler = on_child, .sa_flags = SA_RESTART | SA_NOCLDSTOP};
  sigaction(SIGCHLD, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);
  audit("egress_mediator_start", "\"mode\":\"%s\",\"lock_allowlist\":%s,\"allow\":%d", mitm_socket ? "mitm" : "broker",
        lock_allowlist ? "true" : "false", nallow);
  if (mitm_socket) audit("egress_mitm_enabled", "");
  /* Ready: the parent waits for this line before it starts the VM. */
  printf("ready\n");
  fflush(stdout);

  for (;;) {
    struct pollfd p[4 + MAX_PUBLISH];
    p[0] = (struct pollfd){.fd = tcp_fd, .events = POLLIN};
    p[1] = (struct pollfd){.fd = dns_fd, .events = POLLIN};
    p[2] = (struct pollfd){.fd = up_fd, .events = POLLIN};
    p[3] = (struct pollfd){.fd = sink_fd, .events = POLLIN};
    for (int i = 0; i < npublish; i++) p[4 + i] = (struct pollfd){.fd = publishes[i].fd, .events = POLLIN};
    /* Until the VMM's pid is known, looked for every 50 ms: a VM that runs for less than a second (a
     * short run) takes its pid file with it, and a mediator that never saw it would wait out the grace. */
    int ready = poll(p, (nfds_t)(4 + npublish), vmm_pidfile && vmm_pid == 0 ? 50 : 1000);
    reap_children();
    watch_vmm();
    if (ready < 0) {
      if (errno == EINTR) continue;
      die("poll");
    }
    /* Up to 256 connections per wake (the socket is non-blocking): a flood is drained at the rate
     * it arrives, not one connection per poll. */
    for (int n = 0; n < 256 && (p[0].revents & POLLIN); n++) {
      int c = accept4(tcp_fd, NULL, NULL, SOCK_CLOEXEC);
      if (c < 0) break;
      struct flow f;
      if (classify_guest_tcp(c, &f)) {
        active_conns++;
        pid_t pid = fork();
        if (pid == 0) {
          close(tcp_fd);
          serve_guest_tcp(c, &f);
        }
        if (pid < 0) {
          active_conns--;
          audit("egress_deny", "\"proto\":\"tcp\",\"dst\":\"%s:%d\"%s,\"signal\":\"denied\",\"reason\":\"no process for the flow: %s\"",
                f.dst_s, f.port, f.host_field, strerror(errno));
        }
      }
      close(c);
    }
    if (p[1].revents & POLLIN) handle_dns_query(dns_fd, up_fd);
    if (p[2].revents & POLLIN) handle_dns_reply(dns_fd, up_fd);
    if (p[3].revents & POLLIN) handle_udp_sink(sink_fd);
    expire_dns(dns_fd);
    for (int i = 0; i < npublish; i++) {
      if (!(p[4 + i].revents & POLLIN)) continue;
      int c = accept4(publishes[i].fd, NULL, NULL, SOCK_CLOEXEC);
      if (c < 0) continue;
      pid_t pid = fork();
      if (pid == 0) serve_publish(c, ns, host_ns, publishes[i].guest_port);
      close(c);
    }
  }
}
