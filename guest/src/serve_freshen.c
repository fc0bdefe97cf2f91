/* The channel server's FRESHEN: clock, entropy and crng reseed, hostname and machine-id of a
 * restored guest. */
#include <arpa/inet.h>
#include <net/if.h>

#include "serve_internal.h"

/* ---------- freshen ---------- */

/* From <linux/random.h>, which musl's headers do not ship. Both need CAP_SYS_ADMIN. */
#define MA_RNDADDENTROPY _IOW('R', 0x03, int[2])
#define MA_RNDRESEEDCRNG _IO('R', 0x07)

/* Mixes the host's bytes into the input pool, credited at 8 bits a byte, then reseeds the crng from
 * it at once: without the reseed, Linux would go on serving the snapshot's crng state (shared by every
 * restore of that snapshot) until its next scheduled reseed. */
static int rng_reseed(const uint8_t *p, uint32_t n) {
  struct {
    int entropy_count;
    int buf_size;
    uint8_t buf[MA_MAX_ENTROPY];
  } info;
  int fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) return -1;
  info.entropy_count = (int)(8 * n);
  info.buf_size = (int)n;
  memcpy(info.buf, p, n);
  int r = ioctl(fd, MA_RNDADDENTROPY, &info);
  int e = errno;
  wipe(&info, sizeof info);
  if (r == 0) {
    r = ioctl(fd, MA_RNDRESEEDCRNG);
    e = errno;
  }
  close(fd);
  errno = e;
  return r;
}

/* Replaces a small file of /etc where the image has one: a new file beside it, with its mode and
 * owner, renamed over it, so no reader sees it half written. A symlink, or a file bind-mounted over,
 * cannot be replaced that way and is rewritten in place. 1 written, 0 absent, -1 failed (errno).
 * Not synced here: FRESHEN syncs once, after its reply (ext4's auto_da_alloc, on by default, commits
 * the new data with a rename over a file or a truncate and rewrite, so a crash before that leaves the
 * old content or the new, not an empty file). */
static int replace_etc_file(const char *path, const char *content) {
  struct stat st;
  if (lstat(path, &st) < 0) return errno == ENOENT ? 0 : -1;
  size_t n = strlen(content);
  int e;
  if (!S_ISLNK(st.st_mode)) {
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s.microagent-new", path);
    unlink(tmp);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) return -1;
    if (fchown(fd, st.st_uid, st.st_gid) < 0) ma_dbg("%s: keeping our owner: %s", tmp, strerror(errno));
    if (ma_write_all(fd, content, n) < 0 || fchmod(fd, st.st_mode & 07777) < 0) {
      e = errno;
      close(fd);
      unlink(tmp);
      errno = e;
      return -1;
    }
    close(fd);
    if (rename(tmp, path) == 0) return 1;
    e = errno;
    unlink(tmp);
    errno = e;
    if (e != EBUSY && e != EXDEV) return -1;
  }
  int fd = open(path, O_WRONLY | O_TRUNC | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) return errno == ENOENT ? 0 : -1; /* a dangling symlink: no file there */
  int r = ma_write_all(fd, content, n) < 0 ? -1 : 1;
  e = errno;
  close(fd);
  errno = e;
  return r;
}

/* A new machine-id: 128 bits from the (just reseeded) kernel RNG, shaped as a version 4 UUID the way
 * systemd makes them, written as 32 lowercase hex digits. */
static int new_machine_id(void) {
  uint8_t id[16];
  if (getrandom(id, sizeof id, GRND_NONBLOCK) != (ssize_t)sizeof id) return -1;
  id[6] = (uint8_t)((id[6] & 0x0f) | 0x40);
  id[8] = (uint8_t)((id[8] & 0x3f) | 0x80);
  char text[34];
  for (int i = 0; i < 16; i++) snprintf(text + 2 * i, 3, "%02x", id[i]);
  text[32] = '\n';
  text[33] = 0;
  int r = replace_etc_file("/etc/machine-id", text);
  int e = errno;
  wipe(id, sizeof id);
  wipe(text, sizeof text);
  errno = e;
  return r;
}

/* Records a step's outcome: r < 0 failed (errno), 0 nothing there to change, > 0 done. */
static void step_result(ma_ok *k, int step, int r) {
  k->has_outcome[step] = 1;
  if (r < 0) {
    k->outcome[step] = MA_OUT_FAILED;
    k->err_no[step] = (uint32_t)errno;
    k->has_errno[step] = 1;
  } else {
    k->outcome[step] = r == 0 ? MA_OUT_ABSENT : MA_OUT_DONE;
  }
}

static void step_skipped(ma_ok *k, int step) {
  k->has_outcome[step] = 1;
  k->outcome[step] = MA_OUT_SKIPPED;
}

static int set_hostname(const char *name) {
  if (sethostname(name, strlen(name)) < 0) return -1;
  /* The kernel's name is what answers; /etc/hostname follows where the image has one. */
  char line[MA_MAX_HOSTNAME + 2];
  snprintf(line, sizeof line, "%s\n", name);
  return replace_etc_file("/etc/hostname", line) < 0 ? -1 : 1;
}

/* /etc/resolv.conf with these resolvers ("A.B.C.D,…", checked by the decoder): replaced where the
 * image has one, made where it has none, as a boot makes it. */
static int set_resolvers(const char *list) {
  char content[256] = "", copy[128];
  snprintf(copy, sizeof copy, "%s", list);
  char *save = NULL;
  for (char *d = strtok_r(copy, ",", &save); d; d = strtok_r(NULL, ",", &save)) {
    size_t l = strlen(content);
    snprintf(content + l, sizeof content - l, "nameserver %s\n", d);
  }
  int r = replace_etc_file("/etc/resolv.conf", content);
  if (r != 0) return r;
  int fd = open("/etc/resolv.conf", O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0644);
  if (fd < 0) return -1;
  r = ma_write_all(fd, content, strlen(content)) < 0 ? -1 : 1;
  int e = errno;
  close(fd);
  errno = e;
  return r;
}

/* Gives eth0 this guest's own MAC, address, default route, other routes and resolvers (a copy resumes
 * with its source's, a template's restore with the template's). The MAC goes first: changing it also
 * flushes the ARP entries learnt before the capture, and the IPv6 link-local address derived from the
 * old one is made again from the new. */
static int set_network(const char *address, const char *gateway, const char *mac, const char *routes,
                       const char *dns) {
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) return -1;
  int r = 1;
  if (mac && (ma_if_mac(s, "eth0", mac) < 0 || ma_renew_ipv6("eth0") < 0)) r = -1;
  if (r > 0 && address) {
    char ip[32];
    snprintf(ip, sizeof ip, "%s", address);
    char *slash = strchr(ip, '/');
    int prefix = slash ? atoi(slash + 1) : 24;
    if (slash) *slash = 0;
    struct in_addr a;
    in_addr_t mask = htonl(0xFFFFFFFFu << (32 - prefix));
    if (inet_pton(AF_INET, ip, &a) != 1) {
      errno = EINVAL;
      r = -1;
    } else if (ma_if_addr(s, "eth0", SIOCSIFADDR, a.s_addr) < 0 || ma_if_addr(s, "eth0", SIOCSIFNETMASK, mask) < 0 ||
               ma_if_up(s, "eth0") < 0) {
      r = -1;
    }
  }
  if (r > 0 && gateway) {
    /* A new address drops the routes through the old one: the default route goes back. */
    struct in_addr g;
    if (inet_pton(AF_INET, gateway, &g) != 1) {
      errno = EINVAL;
      r = -1;
    } else if (ma_default_route(s, "eth0", g) < 0) {
      r = -1;
    }
  }
  if (r > 0 && routes) {
    char list[640];
    snprintf(list, sizeof list, "%s", routes);
    char *save = NULL;
    for (char *spec = strtok_r(list, ",", &save); spec && r > 0; spec = strtok_r(NULL, ",", &save))
      if (ma_route_spec(s, "eth0", spec) < 0) r = -1;
  }
  int e = errno;
  close(s);
  if (r > 0 && dns && set_resolvers(dns) < 0) r = -1;
  else errno = e;
  return r;
}

/* The NICs on named networks of a guest restored from a warm-start template, which booted with
 * stand-ins left down: each found by the stand-in's MAC, given the workspace's MAC and address, and
 * brought up (the subnet's route comes with the address). */
static int set_nets(const char *nets) {
  char list[512];
  snprintf(list, sizeof list, "%s", nets);
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) return -1;
  int r = 1;
  char *save = NULL;
  for (char *e = strtok_r(list, ",", &save); e && r > 0; e = strtok_r(NULL, ",", &save)) {
    /* Checked by the decoder: two MACs of 17 characters, each followed by '@', then the address. */
    e[17] = 0;
    e[35] = 0;
    const char *old_mac = e, *new_mac = e + 18, *address = e + 36;
    char ifname[IF_NAMESIZE];
    struct in_addr addr;
    in_addr_t mask;
    if (ma_find_by_mac(old_mac, ifname, sizeof ifname, 0) < 0) {
      errno = ENODEV;
      r = -1;
    } else if (ma_parse_addr(address, &addr, &mask) < 0) {
      errno = EINVAL;
      r = -1;
    } else if (ma_if_mac(s, ifname, new_mac) < 0 || ma_if_addr(s, ifname, SIOCSIFADDR, addr.s_addr) < 0 ||
               ma_if_addr(s, ifname, SIOCSIFNETMASK, mask) < 0 || ma_if_up(s, ifname) < 0) {
      r = -1;
    }
    if (r < 0) ma_log("freshen: NIC %s for %s: %s", old_mac, address, strerror(errno));
  }
  int e = errno;
  close(s);
  errno = e;
  return r;
}

/* Every step asked for is tried, whatever the others did; the OK says how each went. In host test
 * mode nothing of the host's (clock, RNG, hostname, /etc) is touched: the steps are reported skipped. */
void freshen(conn *c, uint32_t id, const ma_freshen *f) {
  ma_ok k;
  memset(&k, 0, sizeof k);
  int host = !cfg->pid1;
  if (f->has_time) {
    struct timespec ts = {.tv_sec = (time_t)f->time_sec, .tv_nsec = (long)f->time_nsec};
    if (host) step_skipped(&k, MA_STEP_CLOCK);
    else step_result(&k, MA_STEP_CLOCK, clock_settime(CLOCK_REALTIME, &ts) < 0 ? -1 : 1);
  }
  if (f->entropy_len) {
    if (host) step_skipped(&k, MA_STEP_RNG);
    else step_result(&k, MA_STEP_RNG, rng_reseed(f->entropy, f->entropy_len) < 0 ? -1 : 1);
  }
  if (f->hostname) {
    if (host) step_skipped(&k, MA_STEP_HOSTNAME);
    else step_result(&k, MA_STEP_HOSTNAME, set_hostname(f->hostname));
  }
  if (f->machine_id) {
    /* After the reseed: the new id comes from this guest's own randomness. */
    if (host) step_skipped(&k, MA_STEP_MACHINE_ID);
    else step_result(&k, MA_STEP_MACHINE_ID, new_machine_id());
  }
  if (f->address || f->gateway || f->mac || f->routes || f->dns) {
    if (host) step_skipped(&k, MA_STEP_NETWORK);
    else step_result(&k, MA_STEP_NETWORK, set_network(f->address, f->gateway, f->mac, f->routes, f->dns));
  }
  if (f->nets) {
    if (host) step_skipped(&k, MA_STEP_NETS);
    else step_result(&k, MA_STEP_NETS, set_nets(f->nets));
  }
  if (f->model_port || f->brokers) {
    /* A template's guest booted with these channels unserved. */
    if (host) step_skipped(&k, MA_STEP_FORWARDERS);
    else {
      if (f->model_port) ma_modelfwd_start("microagent.model", f->model_port);
      if (f->brokers) ma_broker_forwarders_start(f->brokers);
      step_result(&k, MA_STEP_FORWARDERS, 1);
    }
  }
  if (f->disks) {
    /* Last: the workspace's disks take the template's stand-ins' places once the guest is its own. */
    char why[256];
    if (host) step_skipped(&k, MA_STEP_DISKS);
    else if (ma_mount_disks(f->disks, 1, why, sizeof why) < 0) {
      int e = errno;
      ma_log("freshen: %s", why);
      errno = e;
      step_result(&k, MA_STEP_DISKS, -1);
    } else {
      step_result(&k, MA_STEP_DISKS, 1);
    }
  }
  ma_dbg("freshen: outcomes clock %d rng %d hostname %d machine-id %d network %d (-1 not asked)",
         k.has_outcome[0] ? k.outcome[0] : -1, k.has_outcome[1] ? k.outcome[1] : -1,
         k.has_outcome[2] ? k.outcome[2] : -1, k.has_outcome[3] ? k.outcome[3] : -1,
         k.has_outcome[4] ? k.outcome[4] : -1);
  uint8_t buf[192]; /* every step's outcome and errno: 8 × 17 bytes */
  ma_msg ok = {.type = MA_OK, .stream = id, .u.ok = k};
  long len = ma_encode(&ok, buf, sizeof buf);
  send_frame(c, MA_OK, id, buf, len < 0 ? 0 : (size_t)len);
  /* The /etc files reach the disk once, after the reply: three fsyncs (a journal commit and a disk
   * flush each) were a sixth of a warm start's FRESHEN under emulation. */
  if (!host && (f->hostname || f->machine_id || f->dns)) {
    flush_conn(c);
    sync();
  }
}
