/* Shared declarations of the agent: logging, time, the channel server and PID 1 duties. */
#ifndef MA_AGENT_H
#define MA_AGENT_H

#include <netinet/in.h>
#include <stdint.h>
#include <sys/types.h>

#define MA_AGENT_VERSION "0.1.0"

extern int ma_debug;
void ma_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
#define ma_dbg(...)                \
  do {                             \
    if (ma_debug) ma_log(__VA_ARGS__); \
  } while (0)

int64_t ma_now_ms(void);
int64_t ma_now_us(void);
int ma_set_nonblock(int fd);
/* Writes everything or fails; for regular files and small blocking writes. */
int ma_write_all(int fd, const void *p, size_t n);
void ma_sleep_ms(int ms);
/* netconf.c: an interface up, its IPv4 address or netmask (SIOCSIFADDR/SIOCSIFNETMASK), a route to
 * dst/prefix or the default route through `gw` (one already there is fine), its MAC. -1 with errno
 * on failure. */
int ma_if_up(int s, const char *ifname);
int ma_if_addr(int s, const char *ifname, unsigned long req, in_addr_t a);
int ma_add_route(int s, const char *ifname, struct in_addr dst, int prefix, struct in_addr gw);
int ma_default_route(int s, const char *ifname, struct in_addr gw);
/* `A.B.C.D/N` (N absent: 24) as an address and netmask; -1 when it is not one. */
int ma_parse_addr(const char *text, struct in_addr *addr, in_addr_t *mask);
/* The interface whose MAC is `mac` (any case, colon-separated), waiting up to `ms` for it to appear. */
int ma_find_by_mac(const char *mac, char *ifname, size_t cap, int ms);
/* A route given as `DST/N@GW` (N absent: a host route); EINVAL when it is not one. */
int ma_route_spec(int s, const char *ifname, const char *spec);
int ma_if_mac(int s, const char *ifname, const char *mac);
int ma_renew_ipv6(const char *ifname);
/* The /dev node of the virtio-serial port whose name (in /sys/class/virtio-ports/ * /name) is `name`;
 * 0 found, -1 not (yet) there. */
int ma_find_virtio_port(const char *name, char *dev, size_t cap);

enum ma_channel_kind { MA_CH_UNIX, MA_CH_VSOCK, MA_CH_VIRTIO };

typedef struct {
  int pid1;
  enum ma_channel_kind channel;
  const char *unix_path;     /* MA_CH_UNIX */
  unsigned vsock_port;       /* MA_CH_VSOCK */
  const char *virtio_name;   /* MA_CH_VIRTIO: the port name in /sys/class/virtio-ports/ * /name */
  const char *secrets_dir;   /* where SECRETS land */
  int secrets_tmpfs;         /* mount a tmpfs on secrets_dir before first use (PID 1) */
} ma_serve_config;

/* Runs the channel server until a SHUTDOWN; returns the requested action (0 power off, 1 reboot)
 * and grace in ms. Only returns in host mode or to let PID 1 power off. */
int ma_serve(const ma_serve_config *cfg, uint32_t *grace_ms);

/* The model forwarder (modelfwd.c): forks a child serving guest 127.0.0.1:tcp_port over the
 * virtio-serial port named port_name. */
void ma_modelfwd_start(const char *port_name, unsigned tcp_port);
/* The credential broker endpoints' forwarders: the Nth port of `list` ("PORT,…", at most 8) is served
 * over the virtio-serial port microagent.broker.N. */
void ma_broker_forwarders_start(const char *list);

/* disks.c: waits up to `ms` for a path to exist (devtmpfs makes block nodes after the probe); mounts a
 * `dev:mountpoint[:ro|rw],…` list as ext4, each probed again first with `reprobing` (a restored
 * template's stand-in disks), -1 with errno and `why` on the first failure; unmounts them all. */
int ma_wait_for_path(const char *path, int ms);
int ma_mount_disks(const char *disks, int reprobing, char *why, size_t cap);
void ma_unmount_disks(void);

/* PID 1 duties (init.c). */
void ma_init_main(void) __attribute__((noreturn));
void ma_fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

#endif
