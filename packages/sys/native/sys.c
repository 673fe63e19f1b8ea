// Linux system calls that node:fs does not offer: extended attributes, mknod,
// nanosecond timestamps on symlinks, advisory file locks, and fs-verity. Every function is
// synchronous and cheap; callers batch them in worker threads when it matters.
#include <node_api.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <linux/fs.h>
#include <linux/fsverity.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <sys/types.h>
#include <dirent.h>
#include <malloc.h>
#include <inttypes.h>
#include <time.h>
#include <unistd.h>

#define PATH_BUF 4097

static napi_value throw_errno(napi_env env, int err, const char *syscall, const char *path) {
  napi_value error, code, msg, errno_v, sc, p;
  char text[PATH_BUF + 128];
  snprintf(text, sizeof text, "%s: %s '%s'", syscall, strerror(err), path ? path : "");
  napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &msg);
  const char *name = "EIO";
  switch (err) {
    case ENOENT: name = "ENOENT"; break;
    case EEXIST: name = "EEXIST"; break;
    case EACCES: name = "EACCES"; break;
    case EPERM: name = "EPERM"; break;
    case ENOTSUP: name = "ENOTSUP"; break;
    case ENODATA: name = "ENODATA"; break;
    case ENOSPC: name = "ENOSPC"; break;
    case EDQUOT: name = "EDQUOT"; break;
    case ERANGE: name = "ERANGE"; break;
    case E2BIG: name = "E2BIG"; break;
    case EINVAL: name = "EINVAL"; break;
    case ENOTDIR: name = "ENOTDIR"; break;
    case ELOOP: name = "ELOOP"; break;
    case EWOULDBLOCK: name = "EWOULDBLOCK"; break;
    case EBADF: name = "EBADF"; break;
    case EROFS: name = "EROFS"; break;
    case ENAMETOOLONG: name = "ENAMETOOLONG"; break;
    case ENOTTY: name = "ENOTTY"; break;
    case ETXTBSY: name = "ETXTBSY"; break;
    default: break;
  }
  napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &code);
  napi_create_error(env, code, msg, &error);
  napi_create_int32(env, -err, &errno_v);
  napi_set_named_property(env, error, "errno", errno_v);
  napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &sc);
  napi_set_named_property(env, error, "syscall", sc);
  if (path) {
    napi_create_string_utf8(env, path, NAPI_AUTO_LENGTH, &p);
    napi_set_named_property(env, error, "path", p);
  }
  napi_throw(env, error);
  return NULL;
}

// Accepts a string or a Buffer (file names are bytes on Linux).
static int get_path(napi_env env, napi_value v, char *out) {
  napi_valuetype t;
  napi_typeof(env, v, &t);
  if (t == napi_string) {
    size_t len;
    if (napi_get_value_string_utf8(env, v, out, PATH_BUF, &len) != napi_ok) return -1;
    if (len >= PATH_BUF - 1) return -1;
    return 0;
  }
  bool is_buf = false;
  napi_is_buffer(env, v, &is_buf);
  if (is_buf) {
    void *data; size_t len;
    napi_get_buffer_info(env, v, &data, &len);
    if (len >= PATH_BUF || memchr(data, 0, len)) return -1;
    memcpy(out, data, len);
    out[len] = 0;
    return 0;
  }
  return -1;
}

static napi_value type_error(napi_env env, const char *msg) {
  napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg);
  return NULL;
}

// lgetxattrs(path) -> Array<[name: string, value: Buffer]>, names sorted by the caller.
static napi_value js_lgetxattrs(napi_env env, napi_callback_info info) {
  size_t argc = 1; napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  char path[PATH_BUF];
  if (argc < 1 || get_path(env, argv[0], path) != 0) return type_error(env, "path must be a string or Buffer");
  char stackbuf[1024];
  char *names = stackbuf;
  ssize_t n = llistxattr(path, names, sizeof stackbuf);
  if (n < 0 && errno == ERANGE) {
    ssize_t need = llistxattr(path, NULL, 0);
    if (need < 0) return throw_errno(env, errno, "llistxattr", path);
    names = malloc(need);
    n = llistxattr(path, names, need);
  }
  if (n < 0) {
    int e = errno;
    if (names != stackbuf) free(names);
    if (e == ENOTSUP) { napi_value arr; napi_create_array_with_length(env, 0, &arr); return arr; }
    return throw_errno(env, e, "llistxattr", path);
  }
  napi_value arr;
  napi_create_array(env, &arr);
  uint32_t idx = 0;
  for (ssize_t off = 0; off < n;) {
    const char *name = names + off;
    size_t nlen = strlen(name);
    off += nlen + 1;
    if (nlen == 0) continue;
    ssize_t vlen = lgetxattr(path, name, NULL, 0);
    if (vlen < 0) {
      if (errno == ENODATA) continue;  // removed between list and get
      int e = errno;
      if (names != stackbuf) free(names);
      return throw_errno(env, e, "lgetxattr", path);
    }
    void *vdata = NULL;
    napi_value buf;
    napi_create_buffer(env, vlen, &vdata, &buf);
    if (vlen > 0) {
      ssize_t got = lgetxattr(path, name, vdata, vlen);
      if (got < 0) {
        int e = errno;
        if (names != stackbuf) free(names);
        return throw_errno(env, e, "lgetxattr", path);
      }
      if (got < vlen) napi_create_buffer_copy(env, got, vdata, NULL, &buf);
    }
    napi_value pair, nv;
    napi_create_array_with_length(env, 2, &pair);
    napi_create_string_utf8(env, name, nlen, &nv);
    napi_set_element(env, pair, 0, nv);
    napi_set_element(env, pair, 1, buf);
    napi_set_element(env, arr, idx++, pair);
  }
  if (names != stackbuf) free(names);
  return arr;
}

// lsetxattr(path, name, value: Uint8Array)
static napi_value js_lsetxattr(napi_env env, napi_callback_info info) {
  size_t argc = 3; napi_value argv[3];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  char path[PATH_BUF];
  char name[256];
  size_t nlen;
  if (argc < 3 || get_path(env, argv[0], path) != 0) return type_error(env, "path must be a string or Buffer");
  if (napi_get_value_string_utf8(env, argv[1], name, sizeof name, &nlen) != napi_ok || nlen >= sizeof name - 1)
    return type_error(env, "name must be a string of at most 254 bytes");
  void *data = NULL; size_t len = 0;
  bool is_ta = false;
  napi_is_typedarray(env, argv[2], &is_ta);
  if (!is_ta) return type_error(env, "value must be a Uint8Array");
  napi_typedarray_type tt; napi_value ab; size_t boff;
  napi_get_typedarray_info(env, argv[2], &tt, &len, &data, &ab, &boff);
  if (lsetxattr(path, name, data, len, 0) != 0) return throw_errno(env, errno, "lsetxattr", path);
  return NULL;
}

// mknod(path, mode, major, minor): mode carries the file type (S_IFCHR, S_IFBLK, S_IFIFO).
static napi_value js_mknod(napi_env env, napi_callback_info info) {
  size_t argc = 4; napi_value argv[4];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  char path[PATH_BUF];
  uint32_t mode, maj, min;
  if (argc < 4 || get_path(env, argv[0], path) != 0) return type_error(env, "path must be a string or Buffer");
  if (napi_get_value_uint32(env, argv[1], &mode) != napi_ok || napi_get_value_uint32(env, argv[2], &maj) != napi_ok ||
      napi_get_value_uint32(env, argv[3], &min) != napi_ok)
    return type_error(env, "mode, major and minor must be numbers");
  if (mknod(path, (mode_t)mode, makedev(maj, min)) != 0) return throw_errno(env, errno, "mknod", path);
  return NULL;
}

// lutimens(path, atimeSec, atimeNsec, mtimeSec, mtimeNsec): never follows a symlink.
static napi_value js_lutimens(napi_env env, napi_callback_info info) {
  size_t argc = 5; napi_value argv[5];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  char path[PATH_BUF];
  int64_t as, ans, ms, mns;
  if (argc < 5 || get_path(env, argv[0], path) != 0) return type_error(env, "path must be a string or Buffer");
  if (napi_get_value_int64(env, argv[1], &as) != napi_ok || napi_get_value_int64(env, argv[2], &ans) != napi_ok ||
      napi_get_value_int64(env, argv[3], &ms) != napi_ok || napi_get_value_int64(env, argv[4], &mns) != napi_ok)
    return type_error(env, "times must be numbers");
  struct timespec ts[2] = {{.tv_sec = as, .tv_nsec = ans}, {.tv_sec = ms, .tv_nsec = mns}};
  if (utimensat(AT_FDCWD, path, ts, AT_SYMLINK_NOFOLLOW) != 0) return throw_errno(env, errno, "utimensat", path);
  return NULL;
}

// flock(fd, exclusive, wait): returns false when wait is false and the lock is held elsewhere.
static napi_value js_flock(napi_env env, napi_callback_info info) {
  size_t argc = 3; napi_value argv[3];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t fd; bool exclusive, wait;
  if (argc < 3 || napi_get_value_int32(env, argv[0], &fd) != napi_ok || napi_get_value_bool(env, argv[1], &exclusive) != napi_ok ||
      napi_get_value_bool(env, argv[2], &wait) != napi_ok)
    return type_error(env, "flock(fd: number, exclusive: boolean, wait: boolean)");
  int op = (exclusive ? LOCK_EX : LOCK_SH) | (wait ? 0 : LOCK_NB);
  napi_value result;
  if (flock(fd, op) != 0) {
    if (errno == EWOULDBLOCK && !wait) { napi_get_boolean(env, false, &result); return result; }
    return throw_errno(env, errno, "flock", NULL);
  }
  napi_get_boolean(env, true, &result);
  return result;
}

// enableVerity(fd): turns fs-verity on for the file open read-only at fd (sha256,
// 4 KiB blocks, no salt): from then on the kernel refuses writes and checks every
// read against the file's Merkle tree. False when it was on already.
static napi_value js_enable_verity(napi_env env, napi_callback_info info) {
  size_t argc = 1; napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t fd;
  if (argc < 1 || napi_get_value_int32(env, argv[0], &fd) != napi_ok) return type_error(env, "enableVerity(fd: number)");
  struct fsverity_enable_arg arg;
  memset(&arg, 0, sizeof arg);
  arg.version = 1;
  arg.hash_algorithm = FS_VERITY_HASH_ALG_SHA256;
  arg.block_size = 4096;
  napi_value result;
  if (ioctl(fd, FS_IOC_ENABLE_VERITY, &arg) != 0) {
    if (errno == EEXIST) { napi_get_boolean(env, false, &result); return result; }
    return throw_errno(env, errno, "FS_IOC_ENABLE_VERITY", NULL);
  }
  napi_get_boolean(env, true, &result);
  return result;
}

// isVerity(fd): whether fs-verity is on for the file at fd (its inode flag).
static napi_value js_is_verity(napi_env env, napi_callback_info info) {
  size_t argc = 1; napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t fd;
  if (argc < 1 || napi_get_value_int32(env, argv[0], &fd) != napi_ok) return type_error(env, "isVerity(fd: number)");
  int flags = 0;
  if (ioctl(fd, FS_IOC_GETFLAGS, &flags) != 0) return throw_errno(env, errno, "FS_IOC_GETFLAGS", NULL);
  napi_value result;
  napi_get_boolean(env, (flags & FS_VERITY_FL) != 0, &result);
  return result;
}

// statTree(path, maxBytes): one line per path under `path` (itself first, as ""),
// depth first, siblings sorted by name bytes: "rel\0inode\0mode\0ctime ns\0size\n",
// with ctime 0 for a whiteout (a 0/0 character device: overlay links the whiteouts it
// makes to one inode in its work dir, whose removal later moves their ctime).
// What a layer's stat fingerprint hashes; one call instead of a stat per file from JS.
// `skip`, when not empty, names one directory (relative) whose entries are not walked: it is listed itself.
struct tree_buf { char *p; size_t len, cap, max; const char *skip; };

// Decimal digits of v at p, as printf's %llu / %lld would write them; returns the count.
static int put_u64(char *p, uint64_t v) {
  char tmp[20];
  int n = 0;
  do { tmp[n++] = (char)('0' + v % 10); v /= 10; } while (v);
  for (int i = 0; i < n; i++) p[i] = tmp[n - 1 - i];
  return n;
}

static int put_i64(char *p, int64_t v) {
  if (v >= 0) return put_u64(p, (uint64_t)v);
  p[0] = '-';
  return 1 + put_u64(p + 1, (uint64_t)0 - (uint64_t)v);
}

static int tb_put(struct tree_buf *b, const char *rel, size_t rlen, const struct stat *st) {
  char nums[96];
  bool whiteout = S_ISCHR(st->st_mode) && st->st_rdev == 0;
  int64_t ctime_ns = whiteout ? 0 : (int64_t)st->st_ctim.tv_sec * 1000000000 + (int64_t)st->st_ctim.tv_nsec;
  // By hand rather than snprintf: this runs once per path of trees of 100k paths.
  int n = 0;
  nums[n++] = 0;
  n += put_u64(nums + n, (uint64_t)st->st_ino);
  nums[n++] = 0;
  n += put_u64(nums + n, (unsigned)st->st_mode);
  nums[n++] = 0;
  n += put_i64(nums + n, ctime_ns);
  nums[n++] = 0;
  n += put_i64(nums + n, (int64_t)st->st_size);
  nums[n++] = '\n';
  size_t need = rlen + (size_t)n;
  if (b->len + need > b->max) return E2BIG;
  if (b->len + need > b->cap) {
    size_t cap = b->cap ? b->cap : 65536;
    while (cap < b->len + need) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) return ENOMEM;
    b->p = p; b->cap = cap;
  }
  memcpy(b->p + b->len, rel, rlen);
  memcpy(b->p + b->len + rlen, nums, (size_t)n);
  b->len += need;
  return 0;
}

static int cmp_names(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

// Walks the directory open at dfd (closed here), whose path below the root is rel[0..rlen).
static int tree_walk(int dfd, struct tree_buf *b, char *rel, size_t rlen) {
  DIR *d = fdopendir(dfd);
  if (!d) { int e = errno; close(dfd); return e; }
  char **names = NULL; size_t n = 0, cap = 0; int err = 0;
  struct dirent *de;
  errno = 0;
  while ((de = readdir(d)) != NULL) {
    if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
    if (n == cap) {
      cap = cap ? cap * 2 : 64;
      char **grown = realloc(names, cap * sizeof *names);
      if (!grown) { err = ENOMEM; break; }
      names = grown;
    }
    if (!(names[n] = strdup(de->d_name))) { err = ENOMEM; break; }
    n++;
  }
  if (!err && errno) err = errno;
  if (!err) qsort(names, n, sizeof *names, cmp_names);
  for (size_t i = 0; i < n && !err; i++) {
    size_t nlen = strlen(names[i]);
    size_t len = rlen ? rlen + 1 + nlen : nlen;
    if (len >= PATH_BUF) { err = ENAMETOOLONG; break; }
    if (rlen) rel[rlen] = '/';
    memcpy(rel + (rlen ? rlen + 1 : 0), names[i], nlen);
    rel[len] = 0;
    struct stat st;
    // An entry removed since the readdir is not there: what was walked is what exists.
    if (fstatat(dirfd(d), names[i], &st, AT_SYMLINK_NOFOLLOW) != 0) { if (errno == ENOENT) continue; err = errno; break; }
    if ((err = tb_put(b, rel, len, &st)) != 0) break;
    if (S_ISDIR(st.st_mode) && !(b->skip && b->skip[0] && strcmp(rel, b->skip) == 0)) {
      int sub = openat(dirfd(d), names[i], O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (sub < 0 && errno == ENOENT) continue;
      if (sub < 0) { err = errno; break; }
      err = tree_walk(sub, b, rel, len);
    }
  }
  for (size_t i = 0; i < n; i++) free(names[i]);
  free(names);
  closedir(d);
  rel[rlen] = 0;
  return err;
}

static void free_tree_buf(napi_env env, void *data, void *hint) { free(data); }

// The whole walk of `path` into b; an errno, or 0.
static int stat_tree(const char *path, struct tree_buf *b) {
  char rel[PATH_BUF];
  rel[0] = 0;
  struct stat st;
  int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  int err = fd < 0 ? errno : fstat(fd, &st) != 0 ? errno : 0;
  if (!err) err = tb_put(b, rel, 0, &st);
  if (!err) { err = tree_walk(fd, b, rel, 0); fd = -1; }
  if (fd >= 0) close(fd);
  return err;
}

// Hands b's bytes to a JS Buffer (b is emptied).
static napi_value tree_buffer(napi_env env, struct tree_buf *b) {
  napi_value out;
  if (b->len == 0) { free(b->p); b->p = NULL; napi_create_buffer(env, 0, NULL, &out); return out; }
  if (napi_create_external_buffer(env, b->len, b->p, free_tree_buf, NULL, &out) != napi_ok) {
    // Some runtimes refuse external buffers: copy instead.
    void *copy;
    napi_create_buffer_copy(env, b->len, b->p, &copy, &out);
    free(b->p);
  }
  b->p = NULL;
  return out;
}

static int tree_args(napi_env env, napi_callback_info info, char *path, double *max, char *skip) {
  size_t argc = 3; napi_value argv[3];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 2 || get_path(env, argv[0], path) != 0 || napi_get_value_double(env, argv[1], max) != napi_ok || !(*max > 0)) return -1;
  skip[0] = 0;
  if (argc >= 3) {
    napi_valuetype t;
    napi_typeof(env, argv[2], &t);
    if (t != napi_undefined && get_path(env, argv[2], skip) != 0) return -1;
  }
  return 0;
}

static napi_value js_stat_tree(napi_env env, napi_callback_info info) {
  char path[PATH_BUF], skip[PATH_BUF];
  double max;
  if (tree_args(env, info, path, &max, skip) != 0) return type_error(env, "statTree(path: string, maxBytes: number, skip?: string)");
  struct tree_buf b = { NULL, 0, 0, (size_t)max, skip };
  int err = stat_tree(path, &b);
  if (err) { free(b.p); return throw_errno(env, err, "statTree", path); }
  return tree_buffer(env, &b);
}

// statTreeAsync(path, maxBytes): the same walk on a libuv thread, as a Promise.
struct tree_work { napi_async_work work; napi_deferred deferred; char path[PATH_BUF]; char skip[PATH_BUF]; struct tree_buf b; int err; };

static void tree_execute(napi_env env, void *data) {
  struct tree_work *w = data;
  w->err = stat_tree(w->path, &w->b);
}

static void tree_complete(napi_env env, napi_status status, void *data) {
  struct tree_work *w = data;
  if (w->err == 0 && status == napi_ok) {
    napi_resolve_deferred(env, w->deferred, tree_buffer(env, &w->b));
  } else {
    free(w->b.p);
    throw_errno(env, w->err ? w->err : EIO, "statTree", w->path);
    napi_value error;
    napi_get_and_clear_last_exception(env, &error);
    napi_reject_deferred(env, w->deferred, error);
  }
  napi_delete_async_work(env, w->work);
  free(w);
}

static napi_value js_stat_tree_async(napi_env env, napi_callback_info info) {
  struct tree_work *w = calloc(1, sizeof *w);
  if (!w) return throw_errno(env, ENOMEM, "statTree", NULL);
  double max;
  if (tree_args(env, info, w->path, &max, w->skip) != 0) { free(w); return type_error(env, "statTreeAsync(path: string, maxBytes: number, skip?: string)"); }
  w->b.max = (size_t)max;
  w->b.skip = w->skip;
  napi_value promise, name;
  napi_create_promise(env, &w->deferred, &promise);
  napi_create_string_utf8(env, "strata:statTree", NAPI_AUTO_LENGTH, &name);
  napi_create_async_work(env, NULL, name, tree_execute, tree_complete, w, &w->work);
  napi_queue_async_work(env, w->work);
  return promise;
}

// One O_PATH descriptor of the directory last asked for, so that siblings, which
// come one after another in a walk, share one path lookup.
struct dir_cache { int fd; size_t len; char path[PATH_BUF]; };

// The descriptor of the directory named by the first `len` (< PATH_BUF) bytes of
// `path`, or -1 with errno set.
static int dir_fd(struct dir_cache *c, const char *path, size_t len) {
  if (c->fd >= 0 && c->len == len && memcmp(c->path, path, len) == 0) return c->fd;
  if (c->fd >= 0) close(c->fd);
  memcpy(c->path, path, len);
  c->path[len] = 0;
  c->len = len;
  c->fd = open(c->path, O_PATH | O_DIRECTORY | O_CLOEXEC);
  return c->fd;
}

// What describe() found out for one path: mode, uid, gid, size, mtime sec, mtime
// nsec, ino, dev, nlink, rdev major, rdev minor, whether it has any xattr, then:
enum { D_FIELDS = 16, D_DATA_START = 12, D_DATA_LENGTH = 13, D_ERRNO = 14, D_FAILED = 15 };
// D_FAILED: what went wrong, with D_ERRNO saying why (ERANGE for a changed size).
enum { D_OK = 0, D_LSTAT = 1, D_READ = 2, D_CHANGED = 3 };

static void fill_stat(double *o, const struct stat *st) {
  o[0] = st->st_mode; o[1] = st->st_uid; o[2] = st->st_gid; o[3] = (double)st->st_size;
  o[4] = (double)st->st_mtim.tv_sec; o[5] = (double)st->st_mtim.tv_nsec;
  o[6] = (double)st->st_ino; o[7] = (double)st->st_dev; o[8] = (double)st->st_nlink;
  o[9] = major(st->st_rdev); o[10] = minor(st->st_rdev);
}

// Reads exactly `size` bytes of an open regular file into `into`, which has room
// for size + 1: asking for one byte more proves the end of the file in the same
// read for a small file. Returns D_OK, D_READ (errno set) or D_CHANGED.
static int read_exact(int fd, unsigned char *into, size_t size) {
  size_t n = 0;
  for (;;) {
    ssize_t got = read(fd, into + n, size + 1 - n);
    if (got < 0) {
      if (errno == EINTR) continue;
      return D_READ;
    }
    n += (size_t)got;
    if (got == 0 || n >= size) break;
  }
  return n == size ? D_OK : D_CHANGED;
}

// describe(paths: string, out: Float64Array, data: Uint8Array, inlineMax: number) -> number
//
// For each of the absolute paths in `paths` (joined by NUL), in order: lstat, whether
// it has any extended attribute, and for a regular file of 1..inlineMax bytes its
// content, for a symlink its target, both into `data`. Writes D_FIELDS numbers a path
// into `out`; returns the bytes of `data` used. Siblings are reached through one
// descriptor of their directory, so a tree walk pays one path lookup per directory
// rather than three per file. Content that does not fit what is left of `data` is
// not read (D_DATA_LENGTH -1, no error): the caller reads it itself.
static napi_value js_describe(napi_env env, napi_callback_info info) {
  size_t argc = 4; napi_value argv[4];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  napi_valuetype t = napi_undefined;
  if (argc == 4) napi_typeof(env, argv[0], &t);
  if (t != napi_string) return type_error(env, "describe(paths: string, out: Float64Array, data: Uint8Array, inlineMax: number)");
  napi_typedarray_type tt; size_t out_len, data_len; void *out_p, *data_p; napi_value ab; size_t off;
  bool is_ta = false;
  napi_is_typedarray(env, argv[1], &is_ta);
  if (!is_ta) return type_error(env, "out must be a Float64Array");
  napi_get_typedarray_info(env, argv[1], &tt, &out_len, &out_p, &ab, &off);
  if (tt != napi_float64_array) return type_error(env, "out must be a Float64Array");
  napi_is_typedarray(env, argv[2], &is_ta);
  if (!is_ta) return type_error(env, "data must be a Uint8Array");
  napi_get_typedarray_info(env, argv[2], &tt, &data_len, &data_p, &ab, &off);
  if (tt != napi_uint8_array) return type_error(env, "data must be a Uint8Array");
  int64_t inline_max;
  if (napi_get_value_int64(env, argv[3], &inline_max) != napi_ok || inline_max < 0) return type_error(env, "inlineMax must be a number >= 0");

  size_t len;
  napi_get_value_string_utf8(env, argv[0], NULL, 0, &len);
  char *all = malloc(len + 1);
  if (!all) return throw_errno(env, ENOMEM, "describe", NULL);
  napi_get_value_string_utf8(env, argv[0], all, len + 1, &len);

  unsigned char *data = data_p;
  double *out = out_p;
  size_t used = 0, k = 0;
  struct dir_cache dirs = { .fd = -1 };
  for (size_t at = 0; at <= len && (k + 1) * D_FIELDS <= out_len; k++) {
    char *path = all + at;
    size_t plen = strlen(path);
    at += plen + 1;
    double *o = out + k * D_FIELDS;
    for (int f = 0; f < D_FIELDS; f++) o[f] = 0;
    o[D_DATA_LENGTH] = -1;
    char *slash = strrchr(path, '/');
    if (!slash || slash == path || plen >= PATH_BUF) { o[D_FAILED] = D_LSTAT; o[D_ERRNO] = EINVAL; continue; }
    const char *name = slash + 1;
    int dirfd = dir_fd(&dirs, path, (size_t)(slash - path));
    if (dirfd < 0) { o[D_FAILED] = D_LSTAT; o[D_ERRNO] = errno; continue; }
    struct stat st;
    if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) { o[D_FAILED] = D_LSTAT; o[D_ERRNO] = errno; continue; }
    fill_stat(o, &st);
    bool listed = false;
    if (S_ISREG(st.st_mode) && st.st_size > 0 && st.st_size <= inline_max && (size_t)st.st_size + 1 <= data_len - used) {
      // O_NONBLOCK: a file swapped for a FIFO since the lstat must not block the open.
      int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
      if (fd < 0) { o[D_FAILED] = D_READ; o[D_ERRNO] = errno; }
      else {
        int r = read_exact(fd, data + used, (size_t)st.st_size);
        if (r == D_OK) {
          o[D_DATA_START] = (double)used; o[D_DATA_LENGTH] = (double)st.st_size;
          used += (size_t)st.st_size;
        } else { o[D_FAILED] = r; o[D_ERRNO] = r == D_CHANGED ? ERANGE : errno; }
        o[11] = flistxattr(fd, NULL, 0) > 0 ? 1 : 0;
        listed = true;
        close(fd);
      }
    } else if (S_ISLNK(st.st_mode) && data_len - used >= PATH_BUF) {
      ssize_t n = readlinkat(dirfd, name, (char *)data + used, PATH_BUF);
      if (n < 0) { o[D_FAILED] = D_LSTAT; o[D_ERRNO] = errno; continue; }
      if (n >= PATH_BUF) { o[D_FAILED] = D_LSTAT; o[D_ERRNO] = ENAMETOOLONG; continue; }
      o[D_DATA_START] = (double)used; o[D_DATA_LENGTH] = (double)n;
      used += (size_t)n;
    }
    if (!listed) o[11] = llistxattr(path, NULL, 0) > 0 ? 1 : 0;
  }
  if (dirs.fd >= 0) close(dirs.fd);
  free(all);
  napi_value result;
  napi_create_double(env, (double)used, &result);
  return result;
}

// writeFiles(req: Uint8Array, umask: number) -> undefined | { index, errno, syscall }
//
// Creates the small files a layer carries inline, one batch in one call. `req`
// holds, per file, little-endian: u16 path length, the absolute path, u32 mode,
// u32 uid, u32 gid, u32 flags (1: chown), i64 mtime seconds, u32 mtime
// nanoseconds, u32 data length, the data. Each file is created exclusively
// (O_EXCL, never through a symlink) through one descriptor of its directory,
// written, chowned when asked, chmodded when the umask or special bits require it
// and given its mtime (as atime too) on the open descriptor. Stops at the first
// failure and says which file, why, and in which call.
static napi_value js_write_files(napi_env env, napi_callback_info info) {
  size_t argc = 2; napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  bool is_ta = false;
  if (argc == 2) napi_is_typedarray(env, argv[0], &is_ta);
  if (!is_ta) return type_error(env, "writeFiles(req: Uint8Array, umask: number)");
  napi_typedarray_type tt; size_t len; void *p; napi_value ab; size_t off;
  napi_get_typedarray_info(env, argv[0], &tt, &len, &p, &ab, &off);
  if (tt != napi_uint8_array) return type_error(env, "req must be a Uint8Array");
  uint32_t umask_bits;
  if (napi_get_value_uint32(env, argv[1], &umask_bits) != napi_ok) return type_error(env, "umask must be a number");
  const unsigned char *req = p;
  size_t at = 0;
  uint32_t index = 0;
  struct dir_cache dirs = { .fd = -1 };
  char path[PATH_BUF];
  int err = 0;
  const char *failed = NULL;
  for (; at < len; index++) {
    uint16_t plen; uint32_t mode, uid, gid, flags, nsec, dlen; int64_t sec;
    if (len - at < 2) { err = EINVAL; failed = "request"; break; }
    memcpy(&plen, req + at, 2); at += 2;
    if (plen == 0 || plen >= PATH_BUF || len - at < (size_t)plen + 32) { err = EINVAL; failed = "request"; break; }
    memcpy(path, req + at, plen); path[plen] = 0; at += plen;
    memcpy(&mode, req + at, 4); memcpy(&uid, req + at + 4, 4); memcpy(&gid, req + at + 8, 4);
    memcpy(&flags, req + at + 12, 4); memcpy(&sec, req + at + 16, 8); memcpy(&nsec, req + at + 24, 4);
    memcpy(&dlen, req + at + 28, 4); at += 32;
    if (len - at < dlen || memchr(path, 0, plen) || nsec >= 1000000000u) { err = EINVAL; failed = "request"; break; }
    const unsigned char *data = req + at;
    at += dlen;
    const char *slash = strrchr(path, '/');
    if (!slash || slash == path || slash[1] == 0) { err = EINVAL; failed = "request"; break; }
    int dirfd = dir_fd(&dirs, path, (size_t)(slash - path));
    if (dirfd < 0) { err = errno; failed = "open"; break; }
    mode_t wanted = mode & 0777;
    int fd = openat(dirfd, slash + 1, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, wanted);
    if (fd < 0) { err = errno; failed = "open"; break; }
    size_t done = 0;
    while (done < dlen) {
      ssize_t n = write(fd, data + done, dlen - done);
      if (n < 0) { if (errno == EINTR) continue; err = errno; failed = "write"; break; }
      done += (size_t)n;
    }
    // Owner, then mode: chown clears setuid and setgid.
    if (!err && (flags & 1) && fchown(fd, uid, gid) != 0) { err = errno; failed = "fchown"; }
    if (!err && ((wanted & umask_bits) != 0 || (mode & 07777) != wanted) && fchmod(fd, mode & 07777) != 0) { err = errno; failed = "fchmod"; }
    struct timespec times[2] = { { (time_t)sec, (long)nsec }, { (time_t)sec, (long)nsec } };
    if (!err && futimens(fd, times) != 0) { err = errno; failed = "futimens"; }
    if (close(fd) != 0 && !err) { err = errno; failed = "close"; }
    if (err) break;
  }
  if (dirs.fd >= 0) close(dirs.fd);
  napi_value result;
  if (!err) { napi_get_undefined(env, &result); return result; }
  napi_value v;
  napi_create_object(env, &result);
  napi_create_uint32(env, index, &v); napi_set_named_property(env, result, "index", v);
  napi_create_int32(env, err, &v); napi_set_named_property(env, result, "errno", v);
  napi_create_string_utf8(env, failed, NAPI_AUTO_LENGTH, &v); napi_set_named_property(env, result, "syscall", v);
  return result;
}

// glibc's malloc, summed over its arenas: bytes its heaps hold (arena), held in mmap'd
// chunks (hblkhd), handed out (uordblks), free inside the heaps (fordblks), and free at
// the main heap's top, which trimming would give back first (keepcost).
static napi_value js_malloc_info(napi_env env, napi_callback_info info) {
  (void)info;
  struct mallinfo2 mi = mallinfo2();
  napi_value result, v;
  napi_create_object(env, &result);
  napi_create_double(env, (double)mi.arena, &v); napi_set_named_property(env, result, "heap", v);
  napi_create_double(env, (double)mi.hblkhd, &v); napi_set_named_property(env, result, "mmapped", v);
  napi_create_double(env, (double)mi.uordblks, &v); napi_set_named_property(env, result, "inUse", v);
  napi_create_double(env, (double)mi.fordblks, &v); napi_set_named_property(env, result, "free", v);
  napi_create_double(env, (double)mi.keepcost, &v); napi_set_named_property(env, result, "top", v);
  return result;
}

// malloc_trim(0): every arena gives the whole free pages inside its heaps back to the
// kernel (madvise DONTNEED), not only those at the top. True when any were given back.
static napi_value js_malloc_trim(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value result;
  napi_get_boolean(env, malloc_trim(0) != 0, &result);
  return result;
}

// Whether the kernel may back this process's memory with transparent huge pages, at a
// fault or by khugepaged's collapse (PR_SET_THP_DISABLE: for the whole process, every
// thread, from now on). Returns the setting before the call; with no argument, only reads.
static napi_value js_huge_pages(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], result;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int was = prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0);
  if (was < 0) return throw_errno(env, errno, "prctl", NULL);
  if (argc >= 1) {
    bool on;
    if (napi_get_value_bool(env, argv[0], &on) != napi_ok) return type_error(env, "hugePages takes a boolean");
    if (prctl(PR_SET_THP_DISABLE, on ? 0 : 1, 0, 0, 0) != 0) return throw_errno(env, errno, "prctl", NULL);
  }
  napi_get_boolean(env, was == 0, &result);
  return result;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    {"lgetxattrs", NULL, js_lgetxattrs, NULL, NULL, NULL, napi_default, NULL},
    {"lsetxattr", NULL, js_lsetxattr, NULL, NULL, NULL, napi_default, NULL},
    {"mknod", NULL, js_mknod, NULL, NULL, NULL, napi_default, NULL},
    {"lutimens", NULL, js_lutimens, NULL, NULL, NULL, napi_default, NULL},
    {"flock", NULL, js_flock, NULL, NULL, NULL, napi_default, NULL},
    {"enableVerity", NULL, js_enable_verity, NULL, NULL, NULL, napi_default, NULL},
    {"isVerity", NULL, js_is_verity, NULL, NULL, NULL, napi_default, NULL},
    {"statTree", NULL, js_stat_tree, NULL, NULL, NULL, napi_default, NULL},
    {"statTreeAsync", NULL, js_stat_tree_async, NULL, NULL, NULL, napi_default, NULL},
    {"describe", NULL, js_describe, NULL, NULL, NULL, napi_default, NULL},
    {"writeFiles", NULL, js_write_files, NULL, NULL, NULL, napi_default, NULL},
    {"mallocInfo", NULL, js_malloc_info, NULL, NULL, NULL, napi_default, NULL},
    {"mallocTrim", NULL, js_malloc_trim, NULL, NULL, NULL, napi_default, NULL},
    {"hugePages", NULL, js_huge_pages, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
