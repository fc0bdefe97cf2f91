/* Interface configuration through the classic ioctls (no netlink, no ip(8) in the guest): used by
 * /init for the boot-time addresses and by FRESHEN to give a resumed guest its own. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <net/route.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "agent.h"

static void ifreq_for(struct ifreq *ifr, const char *ifname) {
  memset(ifr, 0, sizeof *ifr);
  snprintf(ifr->ifr_name, IFNAMSIZ, "%s", ifname);
}

int ma_if_up(int s, const char *ifname) {
  struct ifreq ifr;
  ifreq_for(&ifr, ifname);
  if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0) return -1;
  ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
  return ioctl(s, SIOCSIFFLAGS, &ifr);
}

int ma_if_addr(int s, const char *ifname, unsigned long req, in_addr_t a) {
  struct ifreq ifr;
  ifreq_for(&ifr, ifname);
  struct sockaddr_in *sin = (struct sockaddr_in *)&ifr.ifr_addr;
  sin->sin_family = AF_INET;
  sin->sin_addr.s_addr = a;
  return ioctl(s, req, &ifr);
}

int ma_add_route(int s, const char *ifname, struct in_addr dst, int prefix, struct in_addr gw) {
  struct rtentry rt;
  memset(&rt, 0, sizeof rt);
  struct sockaddr_in *d = (struct sockaddr_in *)&rt.rt_dst;
  struct sockaddr_in *g = (struct sockaddr_in *)&rt.rt_gateway;
  struct sockaddr_in *m = (struct sockaddr_in *)&rt.rt_genmask;
  d->sin_family = g->sin_family = m->sin_family = AF_INET;
  m->sin_addr.s_addr = prefix == 0 ? 0 : htonl(0xFFFFFFFFu << (32 - prefix));
  d->sin_addr.s_addr = dst.s_addr & m->sin_addr.s_addr;
  g->sin_addr = gw;
  rt.rt_flags = RTF_UP | RTF_GATEWAY | (prefix == 32 ? RTF_HOST : 0);
  rt.rt_dev = (char *)ifname;
  return ioctl(s, SIOCADDRT, &rt) < 0 && errno != EEXIST ? -1 : 0;
}

int ma_route_spec(int s, const char *ifname, const char *spec) {
  char buf[96];
  snprintf(buf, sizeof buf, "%s", spec);
  char *at = strchr(buf, '@'), *slash = strchr(buf, '/');
  struct in_addr dst, gw;
  int prefix = slash ? atoi(slash + 1) : 32;
  if (!at || (slash && slash > at)) {
    errno = EINVAL;
    return -1;
  }
  *at = 0;
  if (slash) *slash = 0;
  if (inet_pton(AF_INET, buf, &dst) != 1 || inet_pton(AF_INET, at + 1, &gw) != 1 || prefix < 0 || prefix > 32) {
    errno = EINVAL;
    return -1;
  }
  return ma_add_route(s, ifname, dst, prefix, gw);
}

int ma_default_route(int s, const char *ifname, struct in_addr gw) {
  struct in_addr any = {.s_addr = 0};
  return ma_add_route(s, ifname, any, 0, gw);
}

int ma_if_mac(int s, const char *ifname, const char *mac) {
  unsigned b[6];
  if (sscanf(mac, "%2x:%2x:%2x:%2x:%2x:%2x", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5]) != 6) {
    errno = EINVAL;
    return -1;
  }
  struct ifreq ifr;
  ifreq_for(&ifr, ifname);
  ifr.ifr_hwaddr.sa_family = ARPHRD_ETHER;
  for (int i = 0; i < 6; i++) ifr.ifr_hwaddr.sa_data[i] = (char)b[i];
  if (ioctl(s, SIOCSIFHWADDR, &ifr) == 0) return 0;
  if (errno != EBUSY) return -1;
  /* A driver without live address changes takes it while the link is down. */
  struct ifreq flags;
  ifreq_for(&flags, ifname);
  if (ioctl(s, SIOCGIFFLAGS, &flags) < 0) return -1;
  short up = flags.ifr_flags;
  flags.ifr_flags &= (short)~IFF_UP;
  if (ioctl(s, SIOCSIFFLAGS, &flags) < 0) return -1;
  int r = ioctl(s, SIOCSIFHWADDR, &ifr);
  int e = errno;
  flags.ifr_flags = up;
  ioctl(s, SIOCSIFFLAGS, &flags);
  errno = e;
  return r;
}

/* The interface's IPv6 addresses made again from its current MAC: turning IPv6 off on the interface
 * drops them (the link-local address derived from the old MAC among them) and turning it back on
 * derives a new link-local address; IPv4 addresses and routes are untouched. No IPv6: nothing to do. */
int ma_renew_ipv6(const char *ifname) {
  char path[96];
  snprintf(path, sizeof path, "/proc/sys/net/ipv6/conf/%s/disable_ipv6", ifname);
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return errno == ENOENT ? 0 : -1;
  char was = '0';
  int rfd = open(path, O_RDONLY | O_CLOEXEC);
  if (rfd >= 0) {
    if (read(rfd, &was, 1) != 1) was = '0';
    close(rfd);
  }
  /* Disabled by choice: left so. */
  if (was == '1') {
    close(fd);
    return 0;
  }
  /* Each value written at the start: a sysctl ignores a write past it. */
  int r = pwrite(fd, "1", 1, 0) == 1 && pwrite(fd, "0", 1, 0) == 1 ? 0 : -1;
  int e = errno;
  close(fd);
  errno = e;
  return r;
}

int ma_parse_addr(const char *text, struct in_addr *addr, in_addr_t *mask) {
  char ip[64];
  snprintf(ip, sizeof ip, "%s", text);
  int prefix = 24;
  char *slash = strchr(ip, '/');
  if (slash) {
    *slash = 0;
    prefix = atoi(slash + 1);
  }
  if (inet_pton(AF_INET, ip, addr) != 1 || prefix < 0 || prefix > 32) return -1;
  *mask = prefix == 0 ? 0 : htonl(0xFFFFFFFFu << (32 - prefix));
  return 0;
}

int ma_find_by_mac(const char *mac, char *ifname, size_t cap, int ms) {
  for (int waited = 0;; waited += 20) {
    DIR *d = opendir("/sys/class/net");
    struct dirent *e;
    while (d && (e = readdir(d))) {
      if (e->d_name[0] == '.') continue;
      char path[300], got[32] = "";
      snprintf(path, sizeof path, "/sys/class/net/%s/address", e->d_name);
      int fd = open(path, O_RDONLY | O_CLOEXEC);
      if (fd < 0) continue;
      ssize_t n = read(fd, got, sizeof got - 1);
      close(fd);
      got[n > 0 ? n : 0] = 0;
      got[strcspn(got, "\n")] = 0;
      if (!strcasecmp(got, mac)) {
        snprintf(ifname, cap, "%s", e->d_name);
        closedir(d);
        return 0;
      }
    }
    if (d) closedir(d);
    if (waited >= ms) return -1;
    ma_sleep_ms(20);
  }
}
