/* The channel server's files and secrets: FILE_PUT (written beside the target, renamed into place),
 * FILE_GET and SECRETS. */
#include "serve_internal.h"

static int secrets_mounted;

/* ---------- files and secrets ---------- */

void put_start(conn *c, uint32_t id, const ma_file_put *f) {
  stream *s = new_stream(c, id, S_PUT);
  if (!s) {
    send_error(c, id, "io_error", "out of memory", ENOMEM);
    return;
  }
  static unsigned counter;
  size_t n = strlen(f->path) + 64;
  s->path = strdup(f->path);
  s->tmp_path = malloc(n);
  if (!s->path || !s->tmp_path) {
    stream_error(s, "io_error", "out of memory");
    return;
  }
  snprintf(s->tmp_path, n, "%s.ma-%d-%u", f->path, (int)getpid(), ++counter);
  s->mode = f->mode;
  s->uid = f->uid;
  s->gid = f->gid;
  s->has_uid = f->has_uid;
  s->has_gid = f->has_gid;
  s->fd = open(s->tmp_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (s->fd < 0) {
    int e = errno;
    free(s->tmp_path);
    s->tmp_path = NULL; /* nothing to remove */
    send_errno(c, id, f->path, e);
    abort_stream(s);
  }
}

void put_data(stream *s, const uint8_t *p, uint32_t n) {
  if (n > s->in_credit) {
    stream_error(s, "flow_control", "file data beyond the granted window");
    return;
  }
  if (ma_write_all(s->fd, p, n) < 0) {
    int e = errno;
    send_errno(s->c, s->id, s->path, e);
    abort_stream(s);
    return;
  }
  /* Written synchronously, so the credit comes straight back. */
  if (n) send_window(s->c, s->id, n);
}

void put_finish(stream *s) {
  int e = 0;
  const char *what = s->path;
  if ((s->has_uid || s->has_gid) &&
      fchown(s->fd, s->has_uid ? s->uid : (uid_t)-1, s->has_gid ? s->gid : (gid_t)-1) < 0)
    e = errno, what = "chown";
  /* after chown, which clears set-id bits */
  if (!e && fchmod(s->fd, s->mode) < 0) e = errno, what = "chmod";
  if (!e && fsync(s->fd) < 0 && errno != EINVAL) e = errno, what = "fsync";
  if (!e && close(s->fd) < 0) e = errno;
  s->fd = -1;
  if (!e && rename(s->tmp_path, s->path) < 0) e = errno, what = s->path;
  if (e) {
    char msg[600];
    snprintf(msg, sizeof msg, "%s", what);
    send_errno(s->c, s->id, msg, e);
    abort_stream(s);
    return;
  }
  send_empty(s->c, MA_OK, s->id);
  free(s->tmp_path);
  s->tmp_path = NULL;
  s->dead = 1;
  s->c->nstreams--;
}

void get_start(conn *c, uint32_t id, const char *path) {
  stream *s = new_stream(c, id, S_GET);
  if (!s) {
    send_error(c, id, "io_error", "out of memory", ENOMEM);
    return;
  }
  struct stat st;
  s->fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK); /* a FIFO must not block us */
  if (s->fd < 0 || fstat(s->fd, &st) < 0) {
    send_errno(c, id, path, errno);
    abort_stream(s);
    return;
  }
  if (!S_ISREG(st.st_mode)) {
    send_errno(c, id, path, S_ISDIR(st.st_mode) ? EISDIR : EINVAL);
    abort_stream(s);
    return;
  }
  uint8_t buf[64];
  ma_writer w;
  ma_writer_init(&w, buf, sizeof buf);
  ma_put_u32(&w, 1, st.st_mode & 07777);
  ma_put_u64(&w, 2, (uint64_t)st.st_size);
  ma_put_u32(&w, 3, st.st_uid);
  ma_put_u32(&w, 4, st.st_gid);
  send_tlv(c, MA_FILE_INFO, id, &w);
}

int get_can_pump(stream *s) {
  return s->kind == S_GET && !s->dead && s->out_credit > 0 && out_pending(s->c) < MA_OUT_HIGH;
}

void get_pump(stream *s) {
  conn *c = s->c;
  size_t n = MA_READ_CHUNK;
  if ((int64_t)n > s->out_credit) n = (size_t)s->out_credit;
  if (out_reserve(c, MA_HEADER_SIZE + n) < 0) return;
  ssize_t r;
  do r = read(s->fd, c->out + c->out_len + MA_HEADER_SIZE, n);
  while (r < 0 && errno == EINTR);
  if (r < 0) {
    send_errno(c, s->id, "read", errno);
    abort_stream(s);
  } else if (r == 0) {
    send_empty(c, MA_EOF, s->id);
    close_fd(&s->fd);
    s->dead = 1;
    c->nstreams--;
  } else {
    ma_write_header(c->out + c->out_len, MA_FILE_DATA, s->id, (uint32_t)r);
    c->out_len += MA_HEADER_SIZE + (size_t)r;
    s->out_credit -= r;
  }
}

static int ensure_secrets_dir(int *err) {
  const char *dir = cfg->secrets_dir;
  if (mkdir(dir, 0700) < 0 && errno != EEXIST) return *err = errno, -1;
  if (cfg->secrets_tmpfs && !secrets_mounted) {
    /* Keep secrets off the disk: a tmpfs only root can enter. */
    if (mount("tmpfs", dir, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0700,size=16m") < 0 &&
        errno != EBUSY)
      return *err = errno, -1;
    secrets_mounted = 1;
  }
  chmod(dir, 0700);
  return 0;
}

/* Zeroes memory the compiler may not skip (the values must not linger in the agent's heap). */
void wipe(volatile void *p, size_t n) {
  volatile uint8_t *b = p;
  while (n--) *b++ = 0;
}

/* Overwrites every file of the secrets directory with zeros in place (the tmpfs pages that held the
 * values are the ones overwritten, not freed with the values in them), then removes it. For a memory
 * snapshot: the captured memory must not hold a secret. */
static int purge_secrets(int *err) {
  DIR *d = opendir(cfg->secrets_dir);
  if (!d) return errno == ENOENT ? 0 : (*err = errno, -1);
  static const uint8_t zeros[4096];
  struct dirent *e;
  while ((e = readdir(d))) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", cfg->secrets_dir, e->d_name);
    int fd = open(path, O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd >= 0) {
      struct stat st;
      if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
        for (off_t off = 0; off < st.st_size;) {
          size_t n = (size_t)(st.st_size - off) < sizeof zeros ? (size_t)(st.st_size - off) : sizeof zeros;
          ssize_t w = pwrite(fd, zeros, n, off);
          if (w <= 0) break;
          off += w;
        }
        fsync(fd);
      }
      close(fd);
    }
    if (unlink(path) < 0 && errno != ENOENT) {
      *err = errno;
      closedir(d);
      return -1;
    }
  }
  closedir(d);
  return 0;
}

void deliver_secrets(conn *c, uint32_t id, const ma_secrets *sec) {
  int e = 0;
  if (sec->purge && purge_secrets(&e) < 0) {
    send_errno(c, id, cfg->secrets_dir, e);
    return;
  }
  if (sec->count == 0) {
    send_empty(c, MA_OK, id);
    return;
  }
  if (ensure_secrets_dir(&e) < 0) {
    send_errno(c, id, cfg->secrets_dir, e);
    return;
  }
  for (uint32_t i = 0; i < sec->count; i++) {
    char path[PATH_MAX], tmp[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", cfg->secrets_dir, sec->items[i].name);
    snprintf(tmp, sizeof tmp, "%s/.%s.tmp", cfg->secrets_dir, sec->items[i].name);
    unlink(tmp);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0400);
    if (fd < 0 || ma_write_all(fd, sec->items[i].value, sec->items[i].value_len) < 0 ||
        fchmod(fd, 0400) < 0) {
      e = errno;
      if (fd >= 0) close(fd);
      unlink(tmp);
      send_errno(c, id, path, e);
      return;
    }
    close(fd);
    if (rename(tmp, path) < 0) {
      e = errno;
      unlink(tmp);
      send_errno(c, id, path, e);
      return;
    }
  }
  send_empty(c, MA_OK, id);
}
