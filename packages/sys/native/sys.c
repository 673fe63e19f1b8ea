// Linux system calls that node:fs does not offer: extended attributes, mknod,
// nanosecond timestamps on symlinks, and advisory file locks. Every function is
// synchronous and cheap; callers batch them in worker threads when it matters.
#include <node_api.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <sys/types.h>
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

// lstatx(path, out: Float64Array(12)) -> void: one lstat, the fields a layer needs,
// without node's BigIntStats objects: mode, uid, gid, size, mtime sec, mtime nsec,
// ino, dev, nlink, rdev major, rdev minor, and whether the path has any xattr.
static napi_value js_lstatx(napi_env env, napi_callback_info info) {
  size_t argc = 2; napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  char path[PATH_BUF];
  if (argc < 2 || get_path(env, argv[0], path) != 0) return type_error(env, "path must be a string or Buffer");
  bool is_ta = false;
  napi_is_typedarray(env, argv[1], &is_ta);
  if (!is_ta) return type_error(env, "out must be a Float64Array(12)");
  napi_typedarray_type tt; size_t len; void *data; napi_value ab; size_t off;
  napi_get_typedarray_info(env, argv[1], &tt, &len, &data, &ab, &off);
  if (tt != napi_float64_array || len < 12) return type_error(env, "out must be a Float64Array(12)");
  struct stat st;
  if (lstat(path, &st) != 0) return throw_errno(env, errno, "lstat", path);
  double *o = (double *)data;
  o[0] = st.st_mode; o[1] = st.st_uid; o[2] = st.st_gid; o[3] = (double)st.st_size;
  o[4] = (double)st.st_mtim.tv_sec; o[5] = (double)st.st_mtim.tv_nsec;
  o[6] = (double)st.st_ino; o[7] = (double)st.st_dev; o[8] = (double)st.st_nlink;
  o[9] = major(st.st_rdev); o[10] = minor(st.st_rdev);
  ssize_t n = llistxattr(path, NULL, 0);
  o[11] = n > 0 ? 1 : 0;
  return NULL;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    {"lgetxattrs", NULL, js_lgetxattrs, NULL, NULL, NULL, napi_default, NULL},
    {"lsetxattr", NULL, js_lsetxattr, NULL, NULL, NULL, napi_default, NULL},
    {"mknod", NULL, js_mknod, NULL, NULL, NULL, napi_default, NULL},
    {"lutimens", NULL, js_lutimens, NULL, NULL, NULL, napi_default, NULL},
    {"flock", NULL, js_flock, NULL, NULL, NULL, napi_default, NULL},
    {"lstatx", NULL, js_lstatx, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
