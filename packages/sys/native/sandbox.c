// strata-sandbox: runs one step's shell inside its OverlayFS view, with no way back
// to the host's filesystem and with root's powers reduced to what installing
// packages needs. Started by the runner (packages/runner/src/sandbox.ts) as:
//
//   strata-sandbox RUN_DIR LOWERS HOST_BASE MASK CWD NAME TMP_BYTES [SHARED...]
//
// with the step's environment as its own and the `run:` script on fd 3. RUN_DIR holds
// l/ (lower symlinks), u/ w/ (upper, work), m/ (the view), b/ h/ (host base) and env.
// Setup problems go to RUN_DIR/setup.log; RUN_DIR/ready marks that the shell started.
//
// Process layout: this process (outside) unshares a pid and IPC namespace, forks
// pid 1 (init) which builds the view in a new mount namespace, pivots into it, then
// forks the step's shell and reaps until the shell exits. The outer process waits
// and passes init's status on, like `unshare --fork --kill-child`.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define PATH_MAX_ 4096
#define SCRIPT_FD 3

static int log_fd = 2;
static const char *run_dir;

static void fail(const char *fmt, ...) {
  char buf[PATH_MAX_ + 256];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
  va_end(ap);
  if (n < 0) n = 0;
  if (n > (int)sizeof buf - 2) n = sizeof buf - 2;
  buf[n++] = '\n';
  if (log_fd == 2 && write(2, "strata: ", 8) < 0) { /* nowhere left to say it */ }
  if (write(log_fd, buf, n) < 0) { /* nowhere left to say it */ }
  _exit(1);
}

#define TRY(call, ...) do { if ((call) < 0) fail(__VA_ARGS__); } while (0)

static void join(char *out, const char *a, const char *b) {
  if (snprintf(out, PATH_MAX_, "%s%s", a, b) >= PATH_MAX_) fail("path too long: %s%s", a, b);
}

static void do_mount(const char *src, const char *dst, const char *type, unsigned long flags, const char *data) {
  if (mount(src, dst, type, flags, data) < 0) fail("mount %s on %s: %s", type ? type : src, dst, strerror(errno));
}

// A bind mount takes its flags only from a remount.
static void bind(const char *src, const char *dst, unsigned long flags) {
  do_mount(src, dst, NULL, MS_BIND, NULL);
  if (flags != 0) do_mount(NULL, dst, NULL, MS_BIND | MS_REMOUNT | flags, NULL);
}

static int exists(const char *p) {
  struct stat st;
  return lstat(p, &st) == 0;
}

static void touch(const char *p) {
  int fd = open(p, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
  if (fd < 0) fail("create %s: %s", p, strerror(errno));
  close(fd);
}

// The lower layer that hides MASK from the host base: MASK's parents, with the
// host's owner, mode and times (a merged dir shows its top-most copy), and an
// OverlayFS whiteout at MASK itself.
static void make_hider(const char *hider, const char *mask) {
  char host[PATH_MAX_], in[PATH_MAX_];
  if (mask[0] != '/' || mask[1] == '\0') fail("mask must be an absolute path below /: %s", mask);
  size_t len = strlen(mask);
  if (len >= PATH_MAX_) fail("mask too long");
  for (size_t i = 1; i <= len; i++) {
    if (mask[i] != '/' && mask[i] != '\0') continue;
    memcpy(host, mask, i);
    host[i] = '\0';
    join(in, hider, host);
    if (i == len) {
      if (mknod(in, S_IFCHR | 0000, makedev(0, 0)) < 0 && errno != EEXIST) fail("whiteout %s: %s", in, strerror(errno));
      break;
    }
    struct stat st;
    if (lstat(host, &st) < 0 || !S_ISDIR(st.st_mode)) return; // nothing to hide below a non-directory
    if (mkdir(in, 0700) < 0) {
      // Made for another hidden path: a directory goes on, a whiteout already hides all below.
      struct stat made;
      if (errno == EEXIST && lstat(in, &made) == 0) {
        if (S_ISDIR(made.st_mode)) continue;
        return;
      }
      fail("mkdir %s: %s", in, strerror(errno));
    }
    TRY(chown(in, st.st_uid, st.st_gid), "chown %s: %s", in, strerror(errno));
    TRY(chmod(in, st.st_mode & 07777), "chmod %s: %s", in, strerror(errno));
    struct timespec ts[2] = { st.st_atim, st.st_mtim };
    TRY(utimensat(AT_FDCWD, in, ts, AT_SYMLINK_NOFOLLOW), "utimes %s: %s", in, strerror(errno));
  }
}

// Setup runs before the pivot, where an absolute symlink in the view (a layer is
// made by a step) would lead to the host: every path it makes or mounts on in the
// view is walked with lstat, and a component that is not a directory is refused.
static void dir_in_view(const char *view, const char *path) {
  char p[PATH_MAX_];
  join(p, view, path);
  for (char *s = p + strlen(view) + 1; ; s++) {
    if (*s != '/' && *s != '\0') continue;
    char c = *s;
    *s = '\0';
    struct stat st;
    if (lstat(p, &st) == 0) {
      if (!S_ISDIR(st.st_mode)) fail("%s is not a directory in the step's filesystem", p + strlen(view));
    } else if (errno != ENOENT || mkdir(p, 0755) < 0) {
      fail("mkdir %s: %s", p, strerror(errno));
    }
    *s = c;
    if (c == '\0') break;
  }
}

// The script comes on fd 3 (a pipe), not in a file on the data dir's disk, which
// may be full, nor in argv or the environment, which cap one string at 128 KiB.
static void copy_script(const char *dst) {
  int out = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0444);
  if (out < 0) fail("create %s: %s", dst, strerror(errno));
  char buf[65536];
  for (;;) {
    ssize_t n = read(SCRIPT_FD, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail("read the script: %s", strerror(errno));
    if (n == 0) break;
    for (ssize_t done = 0; done < n; ) {
      ssize_t w = write(out, buf + done, n - done);
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) fail("write the script to the step's /tmp (%s): %s", dst, strerror(errno));
      done += w;
    }
  }
  close(out);
  close(SCRIPT_FD);
}

// Docker's masked and read-only paths.
static const char *const masked[] = {
  "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
  "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap", NULL
};
static const char *const read_only[] = {
  "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger", NULL
};
static const char *const devices[] = { "null", "zero", "full", "random", "urandom", "tty", NULL };

static void setup_view(const char *m, const char *tmp_size, char **shared, int n_shared) {
  char p[PATH_MAX_], q[PATH_MAX_], opts[128];
  static const char *const dirs[] = { "/proc", "/sys", "/dev", "/tmp", NULL };
  for (int i = 0; dirs[i]; i++) dir_in_view(m, dirs[i]);
  join(p, m, "/proc");
  do_mount("proc", p, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
  join(p, m, "/sys");
  bind("/sys", p, MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC);

  join(p, m, "/dev");
  do_mount("strata-dev", p, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0755,size=64k,nr_inodes=64");
  for (int i = 0; devices[i]; i++) {
    char host[64];
    snprintf(host, sizeof host, "/dev/%s", devices[i]);
    if (!exists(host)) continue;
    join(q, m, host);
    touch(q);
    bind(host, q, 0);
  }
  static const char *const links[][2] = {
    { "/proc/self/fd", "fd" }, { "/proc/self/fd/0", "stdin" }, { "/proc/self/fd/1", "stdout" },
    { "/proc/self/fd/2", "stderr" }, { "pts/ptmx", "ptmx" }
  };
  for (size_t i = 0; i < sizeof links / sizeof links[0]; i++) {
    char dev[64];
    snprintf(dev, sizeof dev, "/dev/%s", links[i][1]);
    join(q, m, dev);
    TRY(symlink(links[i][0], q), "symlink %s: %s", q, strerror(errno));
  }
  join(q, m, "/dev/pts");
  TRY(mkdir(q, 0755), "mkdir %s: %s", q, strerror(errno));
  do_mount("devpts", q, "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5");
  join(q, m, "/dev/shm");
  TRY(mkdir(q, 01777), "mkdir %s: %s", q, strerror(errno));
  snprintf(opts, sizeof opts, "mode=1777,size=%s", tmp_size);
  do_mount("strata-shm", q, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, opts);

  // Masks and read-only parts of /proc and /sys, as Docker sets them.
  char null[PATH_MAX_];
  join(null, m, "/dev/null");
  for (int i = 0; masked[i]; i++) {
    join(p, m, masked[i]);
    struct stat st;
    if (stat(p, &st) < 0) continue;
    if (S_ISDIR(st.st_mode)) do_mount("strata-masked", p, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,nr_inodes=1");
    else bind(null, p, 0);
  }
  for (int i = 0; read_only[i]; i++) {
    join(p, m, read_only[i]);
    if (!exists(p)) continue;
    bind(p, p, MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC);
  }

  join(p, m, "/tmp");
  do_mount("strata-tmp", p, "tmpfs", MS_NOSUID | MS_NODEV, opts);
  join(p, m, "/tmp/.strata-env");
  touch(p);
  join(q, run_dir, "/env");
  bind(q, p, MS_NOSUID | MS_NODEV | MS_NOEXEC);
  join(p, m, "/tmp/.strata-script");
  copy_script(p);

  struct stat st;
  join(q, m, "/etc");
  join(p, m, "/etc/resolv.conf");
  if (stat("/etc/resolv.conf", &st) == 0 && S_ISREG(st.st_mode) && lstat(q, &st) == 0 && S_ISDIR(st.st_mode) &&
      lstat(p, &st) == 0 && S_ISREG(st.st_mode)) {
    bind("/etc/resolv.conf", p, MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC);
  }
  for (int i = 0; i < n_shared; i++) {
    if (shared[i][0] != '/') fail("shared dir must be absolute: %s", shared[i]);
    dir_in_view(m, shared[i]);
    join(p, m, shared[i]);
    bind(shared[i], p, MS_NOSUID | MS_NODEV);
  }
}

// Docker's default capabilities without MKNOD (with no device cgroup, a block device
// node made in the view would read the raw disk) and NET_RAW (the step shares the
// host's network namespace: raw sockets would capture the host's traffic).
static const int keep_caps[] = {
  CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FSETID, CAP_FOWNER, CAP_SETGID, CAP_SETUID, CAP_SETFCAP, CAP_SETPCAP,
  CAP_NET_BIND_SERVICE, CAP_SYS_CHROOT, CAP_KILL, CAP_AUDIT_WRITE
};

static void drop_caps(void) {
  uint64_t keep = 0;
  for (size_t i = 0; i < sizeof keep_caps / sizeof keep_caps[0]; i++) keep |= 1ULL << keep_caps[i];
  for (int c = 0; c < 64; c++) {
    if (keep & (1ULL << c)) continue;
    if (prctl(PR_CAPBSET_DROP, c, 0, 0, 0) < 0) {
      if (errno == EINVAL) break; // past the kernel's last capability
      fail("drop capability %d from the bounding set: %s", c, strerror(errno));
    }
  }
  TRY(prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clear ambient capabilities: %s", strerror(errno));
  struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
  struct __user_cap_data_struct d[2];
  memset(d, 0, sizeof d);
  d[0].effective = d[0].permitted = (uint32_t)keep;
  d[1].effective = d[1].permitted = (uint32_t)(keep >> 32);
  // Inheritable stays empty (Docker since CVE-2022-24769): a non-root program
  // with inheritable file capabilities gains nothing from it.
  TRY(syscall(SYS_capset, &h, d), "capset: %s", strerror(errno));
}

// Refuses new user namespaces (in which a step would get back every capability,
// mount included) and the kernel keyring, which is not namespaced; clone3 says
// ENOSYS so that libc falls back to clone, whose flags a filter can see.
struct nrs { int clone3, keyctl, add_key, request_key, unshare, clone; };

static int rules(struct sock_filter *f, const struct nrs *n) {
  struct sock_filter r[] = {
    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, n->clone3, 0, 1),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, n->keyctl, 2, 0),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, n->add_key, 1, 0),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, n->request_key, 0, 1),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, n->unshare, 1, 0),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, n->clone, 0, 3),
    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0])), // flags, low half
    BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, CLONE_NEWUSER, 0, 1),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  memcpy(f, r, sizeof r);
  return sizeof r / sizeof r[0];
}

static void install_filter(void) {
#if defined(__x86_64__) || defined(__aarch64__)
  struct sock_filter f[64];
  int n = 0;
  f[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch));
#if defined(__x86_64__)
  // clone's arguments differ by ABI but flags come first on both.
  static const struct nrs native = { 435, __NR_keyctl, __NR_add_key, __NR_request_key, __NR_unshare, __NR_clone };
  static const struct nrs i386 = { 435, 288, 286, 287, 310, 120 };
  int jump = n;
  f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 0, 0);
  f[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
  f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 0x40000000, 0, 1); // x32: not offered
  f[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS);
  n += rules(f + n, &native);
  f[jump].jf = n - jump - 1;
  jump = n;
  f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_I386, 1, 0);
  f[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS);
  n += rules(f + n, &i386);
#else
  static const struct nrs native = { __NR_clone3, __NR_keyctl, __NR_add_key, __NR_request_key, __NR_unshare, __NR_clone };
  f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_AARCH64, 1, 0);
  f[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS);
  n += rules(f + n, &native);
#endif
  struct sock_fprog prog = { (unsigned short)n, f };
  TRY(syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog), "seccomp: %s", strerror(errno));
#endif
}

// Mount ids present before the shell starts, to name any the step added.
#define MAX_MOUNTS 256
static int known[MAX_MOUNTS];
static int n_known;

static void read_mounts(void (*each)(int id, const char *line)) {
  FILE *f = fopen("/proc/self/mountinfo", "re");
  if (f == NULL) return;
  char line[PATH_MAX_ * 2];
  while (fgets(line, sizeof line, f)) each(atoi(line), line);
  fclose(f);
}

static void remember(int id, const char *line) {
  (void)line;
  if (n_known < MAX_MOUNTS) known[n_known++] = id;
}

static void report_new(int id, const char *line) {
  for (int i = 0; i < n_known; i++) if (known[i] == id) return;
  // mountinfo: id parent major:minor root mountpoint options ... - fstype source
  char point[PATH_MAX_], type[64];
  const char *dash = strstr(line, " - ");
  if (sscanf(line, "%*d %*d %*s %*s %4095s", point) != 1 || dash == NULL || sscanf(dash, " - %63s", type) != 1) return;
  fprintf(stderr, "strata: %s (%s) was mounted by the step: what it holds is not part of the layer\n", point, type);
}

static int pipe_fds[2];

static int run_init(char **argv, int argc) {
  const char *lowers = argv[2], *host_base = argv[3], *mask = argv[4], *tmp_size = argv[7];
  char m[PATH_MAX_], p[PATH_MAX_], opts[PATH_MAX_ + 256];
  close(pipe_fds[1]);
  // Like --kill-child: die with the outer process; if it is already gone, stop here.
  TRY(prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0), "pdeathsig: %s", strerror(errno));
  struct pollfd pfd = { pipe_fds[0], POLLIN, 0 };
  if (poll(&pfd, 1, 0) > 0) _exit(1);
  // Root's files of pid 1 (/proc/1/fd, its cwd) stay out of the step's reach.
  prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);

  TRY(unshare(CLONE_NEWNS), "unshare mount namespace: %s", strerror(errno));
  do_mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL);
  TRY(chdir(run_dir), "chdir %s: %s", run_dir, strerror(errno));
  TRY(chdir("l"), "chdir %s/l: %s", run_dir, strerror(errno));
  if (strcmp(host_base, "1") == 0) {
    do_mount("strata-hide", "../h", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0755,size=64k");
    // MASK: the host paths to hide, one a line (the data dir first).
    join(p, run_dir, "/h");
    for (const char *s = mask; *s != '\0';) {
      const char *e = strchr(s, '\n');
      size_t n = e != NULL ? (size_t)(e - s) : strlen(s);
      char one[PATH_MAX_];
      if (n >= sizeof one) fail("mask too long");
      memcpy(one, s, n);
      one[n] = '\0';
      if (n > 0) make_hider(p, one);
      s += n + (e != NULL ? 1 : 0);
    }
    do_mount("strata-base", "../b", "overlay", MS_RDONLY, "lowerdir=../h:/");
  }
  snprintf(opts, sizeof opts, "lowerdir=%s,upperdir=../u,workdir=../w,redirect_dir=off,metacopy=off,index=off,xino=off,uuid=null", lowers);
  if (strlen(opts) >= sizeof opts - 1) fail("too many lower layers for one mount");
  // Its source names the run dir: from outside, the step's root says whose it is.
  do_mount(run_dir, "../m", "overlay", MS_NODEV, opts);
  join(m, run_dir, "/m");
  setup_view(m, tmp_size, argv + 8, argc - 8);

  TRY(chdir(m), "chdir %s: %s", m, strerror(errno));
  TRY(syscall(SYS_pivot_root, ".", "."), "pivot_root: %s", strerror(errno));
  TRY(umount2(".", MNT_DETACH), "detach the old root: %s", strerror(errno));
  TRY(chdir("/"), "chdir /: %s", strerror(errno));
  if (access("/bin/sh", X_OK) < 0) fail("no /bin/sh in the step's filesystem");
  read_mounts(remember);
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 8) {
    fprintf(stderr, "usage: strata-sandbox RUN_DIR LOWERS HOST_BASE MASK CWD NAME TMP_SIZE [SHARED...]\n");
    return 2;
  }
  run_dir = argv[1];
  const char *cwd = argv[5], *name = argv[6];
  TRY(prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0), "pdeathsig: %s", strerror(errno));
  if (getppid() == 1) return 1;
  char p[PATH_MAX_];
  join(p, run_dir, "/setup.log");
  log_fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (log_fd < 0) { perror(p); return 1; }
  int rfd = open(run_dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (rfd < 0) fail("open %s: %s", run_dir, strerror(errno));

  TRY(unshare(CLONE_NEWPID | CLONE_NEWIPC), "unshare pid namespace: %s", strerror(errno));
  TRY(pipe2(pipe_fds, O_CLOEXEC), "pipe: %s", strerror(errno));
  // SIGTERM is for the step's processes (the group); the outer process and init outlive it to report.
  signal(SIGTERM, SIG_IGN);
  signal(SIGINT, SIG_IGN);
  pid_t init = fork();
  if (init < 0) fail("fork: %s", strerror(errno));
  if (init == 0) {
    run_init(argv, argc);
    // The runner tells a failed setup from a failed step by this file; the old root is gone, hence the fd.
    int ready = openat(rfd, "ready", O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (ready < 0) fail("create ready: %s", strerror(errno));
    close(ready);
    close(rfd);
    pid_t sh = fork();
    if (sh < 0) fail("fork: %s", strerror(errno));
    if (sh == 0) {
      log_fd = 2; // the step has started: what goes wrong now belongs in its output
      signal(SIGTERM, SIG_DFL);
      signal(SIGINT, SIG_DFL);
      sigset_t none;
      sigemptyset(&none);
      sigprocmask(SIG_SETMASK, &none, NULL);
      prctl(PR_SET_DUMPABLE, 1, 0, 0, 0);
      if (chdir(cwd) < 0) {
        fprintf(stderr, "strata: cwd %s does not exist in the step's filesystem\n", cwd);
        _exit(125);
      }
      install_filter();
      drop_caps();
      close_range(3, ~0U, 0);
      char *const args[] = { "/bin/sh", "-e", "-c", ". /tmp/.strata-script", (char *)name, NULL };
      execv("/bin/sh", args);
      fprintf(stderr, "strata: exec /bin/sh: %s\n", strerror(errno));
      _exit(127);
    }
    close(log_fd);
    log_fd = 2;
    // pid 1 of the namespace: reap every orphan until the shell is done.
    int status = 0;
    for (;;) {
      int st;
      pid_t w = wait(&st);
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) break;
      if (w == sh) {
        status = st;
        break;
      }
    }
    read_mounts(report_new);
    if (WIFSIGNALED(status)) _exit(128 + WTERMSIG(status));
    _exit(WEXITSTATUS(status));
  }
  close(pipe_fds[0]);
  close(rfd);
  close(SCRIPT_FD);
  int status;
  while (waitpid(init, &status, 0) < 0) {
    if (errno != EINTR) return 1;
  }
  if (WIFSIGNALED(status)) {
    signal(WTERMSIG(status), SIG_DFL);
    kill(getpid(), WTERMSIG(status));
  }
  return WEXITSTATUS(status);
}
