/* Extra disks: mounted by PID 1 at boot from microagent.disks, and by a FRESHEN into a guest restored
 * from a warm-start template, whose disks at boot were empty stand-ins for this workspace's. Both
 * unmount at power-off. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent.h"

#define MAX_DISKS 16

static char disk_mounts[MAX_DISKS][256];
static int ndisk_mounts;

static void mkdir_p(const char *path) {
  char p[256];
  snprintf(p, sizeof p, "%s", path);
  for (char *s = p + 1; *s; s++)
    if (*s == '/') {
      *s = 0;
      mkdir(p, 0755);
      *s = '/';
    }
  mkdir(p, 0755);
}

int ma_wait_for_path(const char *path, int ms) {
  struct stat st;
  for (int waited = 0;; waited += 10) {
    if (stat(path, &st) == 0) return 0;
    if (waited >= ms) return -1;
    ma_sleep_ms(10);
  }
}

static int write_sysfs(const char *path, const char *value) {
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  int r = ma_write_all(fd, value, strlen(value));
  int e = errno;
  close(fd);
  errno = e;
  return r;
}

/* The block device the virtio device `vdev` (e.g. virtio2) has now, in `name`; -1 while it has none. */
static int block_of(const char *vdev, char *name, size_t cap) {
  char p[128];
  snprintf(p, sizeof p, "/sys/bus/virtio/devices/%s/block", vdev);
  DIR *d = opendir(p);
  if (!d) return -1;
  struct dirent *e;
  int found = -1;
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    snprintf(name, cap, "%s", e->d_name);
    found = 0;
    break;
  }
  closedir(d);
  return found;
}

/* Probes the disk `dev` (e.g. vdb) again: its virtio driver is unbound and bound, which reads the
 * device's size and read-only flag afresh, as a template's guest must after its restore puts the
 * workspace's disk where the template had an empty one. The disk may come back under another name,
 * which goes to `dev`. */
static int reprobe(char *dev, size_t cap) {
  char link[128], target[PATH_MAX];
  snprintf(link, sizeof link, "/sys/block/%s/device", dev);
  ssize_t n = readlink(link, target, sizeof target - 1);
  if (n < 0) return -1;
  target[n] = 0;
  const char *slash = strrchr(target, '/');
  char vdev[64];
  snprintf(vdev, sizeof vdev, "%s", slash ? slash + 1 : target);
  if (strncmp(vdev, "virtio", 6) != 0) {
    errno = ENODEV;
    return -1;
  }
  if (write_sysfs("/sys/bus/virtio/drivers/virtio_blk/unbind", vdev) < 0) return -1;
  if (write_sysfs("/sys/bus/virtio/drivers/virtio_blk/bind", vdev) < 0) return -1;
  for (int waited = 0; block_of(vdev, dev, cap) < 0; waited += 10) {
    if (waited >= 5000) {
      errno = ETIMEDOUT;
      return -1;
    }
    ma_sleep_ms(10);
  }
  return 0;
}

int ma_mount_disks(const char *disks, int reprobing, char *why, size_t cap) {
  char list[1024];
  snprintf(list, sizeof list, "%s", disks);
  char *save = NULL;
  for (char *d = strtok_r(list, ",", &save); d; d = strtok_r(NULL, ",", &save)) {
    char *c1 = strchr(d, ':');
    char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
    if (!c1) {
      snprintf(why, cap, "bad disk entry %s", d);
      errno = EINVAL;
      return -1;
    }
    *c1 = 0;
    if (c2) *c2 = 0;
    const char *mp = c1 + 1, *mode = c2 ? c2 + 1 : "rw";
    char name[64], dev[128];
    snprintf(name, sizeof name, "%s", d);
    if (reprobing && reprobe(name, sizeof name) < 0) {
      int e = errno;
      snprintf(why, cap, "probing disk %s for %s again: %s", d, mp, strerror(e));
      errno = e;
      return -1;
    }
    snprintf(dev, sizeof dev, "/dev/%s", name);
    if (ma_wait_for_path(dev, 5000) < 0) {
      snprintf(why, cap, "disk %s for %s did not appear", dev, mp);
      errno = ENODEV;
      return -1;
    }
    mkdir_p(mp);
    int ro = !strcmp(mode, "ro");
    if (mount(dev, mp, "ext4", ro ? MS_RDONLY : 0, ro ? "noload" : NULL) < 0) {
      int e = errno;
      snprintf(why, cap, "mount %s on %s: %s", dev, mp, strerror(e));
      errno = e;
      return -1;
    }
    if (ndisk_mounts < MAX_DISKS) snprintf(disk_mounts[ndisk_mounts++], 256, "%s", mp);
  }
  return 0;
}

void ma_unmount_disks(void) {
  for (int i = ndisk_mounts - 1; i >= 0; i--) umount2(disk_mounts[i], MNT_DETACH);
  ndisk_mounts = 0;
}
