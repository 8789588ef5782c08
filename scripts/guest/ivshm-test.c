// SPDX-License-Identifier: GPL-2.0
/*
 * ivshm-test: small, statically linked test program of the guest harness.
 *
 *   ivshm-test info DEV                 print IVSHM_IOC_INFO of /dev/ivshmN
 *   ivshm-test selftest DEV             ioctl and mmap argument checks
 *   ivshm-test fill PATH OFF LEN SEED   write pattern SEED at OFF via mmap
 *   ivshm-test check PATH OFF LEN SEED  verify pattern SEED at OFF via mmap
 *   ivshm-test hold DEV OFF LEN SEED    map, verify, then wait for SIGUSR1;
 *                                       on SIGUSR1 touch the mapping again and
 *                                       report whether it was revoked (SIGBUS)
 *   ivshm-test pin DEV OFF              vmsplice the page at OFF of a mapping
 *                                       into a pipe nobody reads, unmap and
 *                                       close DEV, print "pinned", wait for
 *                                       SIGUSR1, then close the pipe (the pin)
 *   ivshm-test bench PATH MIB ROUNDS    copy bandwidth through a mapping of
 *                                       PATH (/dev/ivshmN or sysfs resource2)
 *   ivshm-test gen SEED LEN             write LEN pseudo-random bytes to stdout
 *   ivshm-test append PATH              append stdin to PATH; print errno name
 *                                       and exit 1 on failure
 *   ivshm-test mapcat PATH              map all of PATH (PROT_READ, MAP_SHARED)
 *                                       and write the mapping to stdout, as a
 *                                       program reading a file through mmap
 *                                       does; on failure print the call and
 *                                       errno name to stderr and exit 1
 *   ivshm-test ring DEV PEER VECTOR     IVSHM_IOC_RING once
 *   ivshm-test waitread DEV             print "waiting", then one blocking
 *                                       read(); print its result or errno name
 *   ivshm-test pingpong DEV ME PEER OFF SECONDS
 *                                       two doorbell guests: each marks itself
 *                                       ready in the region at OFF, rings the
 *                                       peer's vector 1 until the peer says it
 *                                       got it, and waits for its own vector 1
 *                                       with poll(); checks the counters of
 *                                       all vectors / vector 1 / vector 0
 *   ivshm-test echo FOLLOW OUT TAG      for each line "ping TAG-X" read from
 *                                       FOLLOW (a follow/ file) append
 *                                       "pong TAG-X" to OUT; stop after
 *                                       "ping TAG end" (OUT stays open)
 *   ivshm-test ping OUT FOLLOW TAG COUNT QUIET_MS
 *                                       COUNT times: stay quiet QUIET_MS, then
 *                                       append "ping TAG-i" to OUT and wait for
 *                                       "pong TAG-i" on FOLLOW; prints the
 *                                       one-way latency (round trip / 2):
 *                                       "latency TAG n=.. p50_us=.. p99_us=.. max_us=.."
 *                                       (one warm-up round trip first, not
 *                                       counted); "ping TAG end" ends the echo.
 *                                       OUT is opened once: each message is
 *                                       one write(), as a request/reply
 *                                       program sends it
 *
 * PATH may be /dev/ivshmN (size from the ioctl), a sysfs resource2 file or a
 * regular file (size from fstat). Exit status 0 means success.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "ivshm.h"

static uint64_t xorshift(uint64_t* s) {
  uint64_t x = *s;

  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return *s = x;
}

static uint64_t seed_state(uint64_t seed) { return seed * 0x9E3779B97F4A7C15ULL + 0x2545F4914F6CDD1DULL; }

/* Byte i of pattern SEED, independent of where a copy starts. */
static void pattern(uint64_t seed, uint64_t off, unsigned char* buf, size_t len) {
  for (size_t i = 0; i < len; i++) {
    uint64_t s = seed_state(seed ^ ((off + i) >> 3));
    buf[i] = (unsigned char)(xorshift(&s) >> (8 * ((off + i) & 7)));
  }
}

static int is_ivshm_dev(int fd) {
  struct stat st;

  return fstat(fd, &st) == 0 && S_ISCHR(st.st_mode);
}

static int open_region(const char* path, int flags, uint64_t* size) {
  int fd = open(path, flags);
  struct stat st;

  if (fd < 0) {
    fprintf(stderr, "open %s: %s\n", path, strerror(errno));
    return -1;
  }
  if (is_ivshm_dev(fd)) {
    struct ivshm_info info;

    if (ioctl(fd, IVSHM_IOC_INFO, &info) < 0) {
      fprintf(stderr, "IVSHM_IOC_INFO %s: %s\n", path, strerror(errno));
      close(fd);
      return -1;
    }
    *size = info.bar2_size;
  } else {
    if (fstat(fd, &st) < 0) {
      fprintf(stderr, "fstat %s: %s\n", path, strerror(errno));
      close(fd);
      return -1;
    }
    *size = (uint64_t)st.st_size;
  }
  return fd;
}

static unsigned char* map_region(const char* path, int* fdp, uint64_t* size) {
  void* p;
  int fd = open_region(path, O_RDWR, size);

  if (fd < 0) return NULL;
  p = mmap(NULL, *size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {
    fprintf(stderr, "mmap %s: %s\n", path, strerror(errno));
    close(fd);
    return NULL;
  }
  *fdp = fd;
  return p;
}

static int cmd_info(const char* dev) {
  struct ivshm_info info;
  int fd = open(dev, O_RDONLY);

  if (fd < 0 || ioctl(fd, IVSHM_IOC_INFO, &info) < 0) {
    fprintf(stderr, "%s: %s\n", dev, strerror(errno));
    return 1;
  }
  printf("bar2_size=%" PRIu64
         " ivposition=%u revision=%u flags=%#x vectors=%u minor=%u msix=%d pages=%d doorbell=%d info_version=%u\n",
         (uint64_t)info.bar2_size, info.ivposition, info.revision, info.flags, info.vectors, info.minor,
         !!(info.flags & IVSHM_INFO_F_MSIX), !!(info.flags & IVSHM_INFO_F_PAGES),
         !!(info.flags & IVSHM_INFO_F_DOORBELL), info.info_version);
  close(fd);
  return 0;
}

static int failures;

static void expect(int ok, const char* what) {
  printf("  %s %s\n", ok ? "ok  " : "FAIL", what);
  if (!ok) failures++;
}

static int mmap_errno(int fd, size_t len, int prot, int flags, off_t off) {
  void* p = mmap(NULL, len, prot, flags, fd, off);

  if (p == MAP_FAILED) return errno;
  munmap(p, len);
  return 0;
}

static int cmd_selftest(const char* dev) {
  long pg = sysconf(_SC_PAGESIZE);
  struct ivshm_info info;
  uint64_t size;
  int fd, rfd, e;
  char junk[8];

  fd = open_region(dev, O_RDWR, &size);
  if (fd < 0) return 1;
  expect(ioctl(fd, IVSHM_IOC_INFO, &info) == 0, "IVSHM_IOC_INFO");
  expect(info.reserved[0] == 0 && info.reserved[3] == 0, "reserved fields are zero");
  expect(info.info_version == IVSHM_INFO_VERSION, "info_version is this header's IVSHM_INFO_VERSION");
  expect(!(info.flags & ~(IVSHM_INFO_F_MSIX | IVSHM_INFO_F_PAGES | IVSHM_INFO_F_DOORBELL)), "no unknown flags");
  expect(ioctl(fd, _IO(IVSHM_IOCTL_BASE, 0x7f)) < 0 && errno == ENOTTY, "unknown ioctl -> ENOTTY");
  expect(ioctl(fd, IVSHM_IOC_INFO, (void*)16) < 0 && errno == EFAULT, "bad ioctl pointer -> EFAULT");
  if (!(info.flags & IVSHM_INFO_F_DOORBELL)) {
    /* ivshmem-plain: no interrupts to wait for, no doorbell to ring. */
    struct pollfd p = {fd, POLLIN, 0};
    struct ivshm_ring r = {0, 0, 0};
    int32_t v = IVSHM_ALL_VECTORS;

    expect(read(fd, junk, sizeof(junk)) < 0 && errno == EINVAL, "plain: read() -> EINVAL");
    expect(poll(&p, 1, 0) == 1 && (p.revents & POLLERR) && !(p.revents & POLLIN), "plain: poll() -> POLLERR");
    expect(ioctl(fd, IVSHM_IOC_RING, &r) < 0 && errno == EOPNOTSUPP, "plain: IVSHM_IOC_RING -> EOPNOTSUPP");
    expect(ioctl(fd, IVSHM_IOC_WAIT_VECTOR, &v) < 0 && errno == EOPNOTSUPP,
           "plain: IVSHM_IOC_WAIT_VECTOR -> EOPNOTSUPP");
  } else {
    struct pollfd p = {fd, POLLIN, 0};
    struct ivshm_ring r = {0, 0, 1};
    int32_t v = (int32_t)info.vectors;
    int nfd = open(dev, O_RDWR | O_NONBLOCK);
    int rofd = open(dev, O_RDONLY);

    expect(info.flags & IVSHM_INFO_F_MSIX, "doorbell: MSI-X flag too");
    expect(read(fd, junk, 4) < 0 && errno == EINVAL, "doorbell: read() of 4 bytes -> EINVAL");
    expect(nfd >= 0 && read(nfd, junk, 8) < 0 && errno == EAGAIN, "doorbell: O_NONBLOCK read() -> EAGAIN");
    expect(poll(&p, 1, 0) == 0, "doorbell: poll() without an interrupt -> not ready");
    expect(ioctl(fd, IVSHM_IOC_RING, &r) < 0 && errno == EINVAL, "doorbell: ring with flags -> EINVAL");
    expect(ioctl(fd, IVSHM_IOC_RING, (void*)16) < 0 && errno == EFAULT, "doorbell: ring, bad pointer -> EFAULT");
    r.flags = 0;
    expect(rofd >= 0 && ioctl(rofd, IVSHM_IOC_RING, &r) < 0 && errno == EBADF,
           "doorbell: ring on an O_RDONLY fd -> EBADF");
    expect(ioctl(fd, IVSHM_IOC_WAIT_VECTOR, &v) < 0 && errno == EINVAL,
           "doorbell: wait for vector >= vectors -> EINVAL");
    v = -2;
    expect(ioctl(fd, IVSHM_IOC_WAIT_VECTOR, &v) < 0 && errno == EINVAL, "doorbell: wait for vector -2 -> EINVAL");
    v = 0;
    expect(ioctl(fd, IVSHM_IOC_WAIT_VECTOR, &v) == 0, "doorbell: wait for vector 0");
    v = IVSHM_ALL_VECTORS;
    expect(ioctl(fd, IVSHM_IOC_WAIT_VECTOR, &v) == 0, "doorbell: wait for all vectors");
    if (nfd >= 0) close(nfd);
    if (rofd >= 0) close(rofd);
  }

  expect(mmap_errno(fd, size, PROT_READ | PROT_WRITE, MAP_SHARED, 0) == 0, "mmap whole BAR2");
  expect(mmap_errno(fd, (size_t)pg, PROT_READ, MAP_SHARED, (off_t)(size - (uint64_t)pg)) == 0, "mmap last page");
  e = mmap_errno(fd, 2 * (size_t)pg, PROT_READ, MAP_SHARED, (off_t)(size - (uint64_t)pg));
  expect(e == EINVAL, "mmap past the end -> EINVAL");
  e = mmap_errno(fd, (size_t)pg, PROT_READ, MAP_SHARED, (off_t)size);
  expect(e == EINVAL, "mmap at offset == size -> EINVAL");
  e = mmap_errno(fd, (size_t)pg, PROT_READ, MAP_SHARED, (off_t)(INT64_MAX & ~(pg - 1)));
  expect(e == EINVAL || e == EOVERFLOW, "mmap at huge offset fails");
  e = mmap_errno(fd, (size_t)size + (size_t)pg, PROT_READ, MAP_SHARED, 0);
  expect(e == EINVAL, "mmap longer than BAR2 -> EINVAL");
  e = mmap_errno(fd, (size_t)pg, PROT_READ | PROT_WRITE, MAP_PRIVATE, 0);
  expect(e == EINVAL, "MAP_PRIVATE -> EINVAL");

  rfd = open(dev, O_RDONLY);
  expect(rfd >= 0, "open read-only");
  if (rfd >= 0) {
    e = mmap_errno(rfd, (size_t)pg, PROT_READ | PROT_WRITE, MAP_SHARED, 0);
    expect(e == EACCES, "writable mmap of O_RDONLY fd -> EACCES");
    e = mmap_errno(rfd, (size_t)pg, PROT_READ, MAP_SHARED, 0);
    expect(e == 0, "read-only mmap of O_RDONLY fd");
    close(rfd);
  }

  /* Two mappings of the same page see each other's stores. */
  {
    volatile uint64_t *a, *b;

    a = mmap(NULL, (size_t)pg, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)(size - (uint64_t)pg));
    b = mmap(NULL, (size_t)pg, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)(size - (uint64_t)pg));
    expect(a != MAP_FAILED && b != MAP_FAILED, "two mappings");
    if (a != MAP_FAILED && b != MAP_FAILED) {
      a[1] = 0x1122334455667788ULL;
      expect(b[1] == 0x1122334455667788ULL, "mappings alias the same memory");
      a[1] = 0;
      munmap((void*)a, (size_t)pg);
      munmap((void*)b, (size_t)pg);
    }
  }
  /*
   * get_user_pages() on the mapping, as the FUSE device does when a
   * reply points into it: process_vm_readv() pins the source pages.
   */
  {
    unsigned char* m = mmap(NULL, (size_t)pg, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    unsigned char buf[64];
    struct iovec local = {buf, sizeof(buf)};
    struct iovec remote = {m, sizeof(buf)};

    expect(m != MAP_FAILED, "map first page");
    /* BARs not 2 MiB aligned have no struct pages: no pinning. */
    if (m != MAP_FAILED && size % (2u << 20)) {
      printf("  skip pinning: BAR2 is not a multiple of 2 MiB\n");
      munmap(m, (size_t)pg);
    } else if (m != MAP_FAILED) {
      memset(m + 64, 0xa5, 1);
      remote.iov_base = m + 64;
      expect(process_vm_readv(getpid(), &local, 1, &remote, 1, 0) == (ssize_t)sizeof(buf) && buf[0] == 0xa5,
             "pages of the mapping can be pinned (GUP)");
      munmap(m, (size_t)pg);
    }
  }
  close(fd);
  printf("selftest: %d failure(s)\n", failures);
  return failures ? 1 : 0;
}

static int range(uint64_t size, uint64_t off, uint64_t len) {
  if (off > size || len > size - off) {
    fprintf(stderr, "range %" PRIu64 "+%" PRIu64 " outside region of %" PRIu64 " bytes\n", off, len, size);
    return -1;
  }
  return 0;
}

static int cmd_fill_check(int check, const char* path, uint64_t off, uint64_t len, uint64_t seed) {
  unsigned char buf[4096];
  unsigned char* m;
  uint64_t size, done;
  int fd;

  m = map_region(path, &fd, &size);
  if (!m || range(size, off, len)) return 1;
  for (done = 0; done < len; done += sizeof(buf)) {
    size_t n = len - done < sizeof(buf) ? len - done : sizeof(buf);

    pattern(seed, off + done, buf, n);
    if (!check) {
      memcpy(m + off + done, buf, n);
    } else if (memcmp(m + off + done, buf, n)) {
      fprintf(stderr, "mismatch near offset %" PRIu64 "\n", off + done);
      return 1;
    }
  }
  if (!check) msync(m, size, MS_SYNC);
  return 0;
}

static sigjmp_buf bus_jmp;
static volatile sig_atomic_t got_usr1;

static void on_sigbus(int sig) {
  (void)sig;
  siglongjmp(bus_jmp, 1);
}

static void on_usr1(int sig) {
  (void)sig;
  got_usr1 = 1;
}

/* Sleeps until SIGUSR1 (the harness's "go on"), without missing one sent early. */
static void wait_for_usr1(void) {
  sigset_t mask, old;
  sigemptyset(&mask);
  sigaddset(&mask, SIGUSR1);
  sigprocmask(SIG_BLOCK, &mask, &old);
  while (!got_usr1) sigsuspend(&old);
  sigprocmask(SIG_SETMASK, &old, NULL);
}

static int cmd_hold(const char* path, uint64_t off, uint64_t len, uint64_t seed) {
  unsigned char buf[4096];
  volatile unsigned char* m;
  uint64_t size, i;
  int fd;

  signal(SIGUSR1, on_usr1);
  signal(SIGBUS, on_sigbus);
  m = map_region(path, &fd, &size);
  if (!m || range(size, off, len) || len == 0) return 1;
  for (i = 0; i < len; i += sizeof(buf)) {
    size_t n = len - i < sizeof(buf) ? len - i : sizeof(buf);

    pattern(seed, off + i, buf, n);
    if (memcmp((void*)(m + off + i), buf, n)) {
      printf("hold: pattern mismatch before revoke\n");
      return 1;
    }
  }
  /* Close the fd: the mapping alone must keep everything alive. */
  close(fd);
  printf("hold: mapped %" PRIu64 " bytes, pattern ok, waiting\n", size);
  fflush(stdout);

  wait_for_usr1();

  if (sigsetjmp(bus_jmp, 1)) {
    printf("hold: access after unbind -> SIGBUS (revoked)\n");
    fflush(stdout);
    return 0;
  }
  i = m[off];
  printf("hold: access after unbind returned 0x%02x (not revoked)\n", (unsigned)i);
  return 2;
}

static int cmd_pin(const char* path, uint64_t off) {
  unsigned char* m;
  uint64_t size;
  long page = sysconf(_SC_PAGESIZE);
  struct iovec iov;
  int fd, pipefd[2];
  ssize_t n;

  signal(SIGUSR1, on_usr1);
  m = map_region(path, &fd, &size);
  if (!m || range(size, off, (uint64_t)page)) return 1;
  if (pipe(pipefd) < 0) {
    perror("pipe");
    return 1;
  }
  /* The pipe buffer takes a reference on the page itself (no copy). */
  iov.iov_base = m + (off & ~(uint64_t)(page - 1));
  iov.iov_len = (size_t)page;
  n = vmsplice(pipefd[1], &iov, 1, 0);
  if (n != page) {
    printf("pin: vmsplice of a page of %s: %s\n", path, n < 0 ? strerror(errno) : "short");
    return 1;
  }
  munmap(m, size);
  close(fd);
  printf("pin: one page pinned by a pipe; %s unmapped and closed, waiting\n", path);
  fflush(stdout);

  wait_for_usr1();
  close(pipefd[0]);
  close(pipefd[1]);
  printf("pin: pipe closed\n");
  return 0;
}

static double now(void) {
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmd_bench(const char* path, uint64_t mib, unsigned rounds) {
  uint64_t size, len = mib << 20;
  double t, wbest = 1e30, rbest = 1e30;
  unsigned char *m, *priv;
  volatile unsigned sink = 0;
  int fd;

  m = map_region(path, &fd, &size);
  if (!m) return 1;
  if (len > size) len = size;
  priv = malloc(len);
  if (!priv) return 1;
  memset(priv, 0x5a, len);
  /* Fault everything in first: measure copies, not page faults. */
  memcpy(m, priv, len);
  memcpy(priv, m, len);
  for (unsigned r = 0; r < rounds; r++) {
    t = now();
    memcpy(m, priv, len);
    t = now() - t;
    if (t < wbest) wbest = t;
    t = now();
    memcpy(priv, m, len);
    sink += priv[len / 2];
    t = now() - t;
    if (t < rbest) rbest = t;
  }
  printf("bench %s: %" PRIu64 " MiB, best of %u: write %.1f MB/s, read %.1f MB/s\n", path, len >> 20, rounds,
         (double)len / wbest / 1e6, (double)len / rbest / 1e6);
  (void)sink;
  return 0;
}

static int cmd_gen(uint64_t seed, uint64_t len) {
  unsigned char buf[65536];
  uint64_t done;

  for (done = 0; done < len; done += sizeof(buf)) {
    size_t n = len - done < sizeof(buf) ? len - done : sizeof(buf);

    pattern(seed, done, buf, n);
    if (fwrite(buf, 1, n, stdout) != n) return 1;
  }
  return fflush(stdout) ? 1 : 0;
}

static int cmd_append(const char* path) {
  char buf[65536];
  ssize_t n;
  int fd = open(path, O_WRONLY | O_APPEND);

  if (fd < 0) {
    printf("%s\n", strerrorname_np(errno));
    return 1;
  }
  while ((n = read(0, buf, sizeof(buf))) > 0) {
    if (write(fd, buf, (size_t)n) != n) {
      printf("%s\n", strerrorname_np(errno));
      return 1;
    }
  }
  if (close(fd) < 0) {
    printf("%s\n", strerrorname_np(errno));
    return 1;
  }
  printf("OK\n");
  return 0;
}

static int cmd_mapcat(const char* path) {
  struct stat st;
  const unsigned char* m;
  size_t done = 0;
  int fd = open(path, O_RDONLY);

  if (fd < 0 || fstat(fd, &st) < 0) {
    fprintf(stderr, "mapcat %s: open: %s\n", path, strerrorname_np(errno));
    return 1;
  }
  if (st.st_size == 0) return 0;
  m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
  if (m == MAP_FAILED) {
    fprintf(stderr, "mapcat %s: mmap: %s\n", path, strerrorname_np(errno));
    return 1;
  }
  close(fd);
  while (done < (size_t)st.st_size) {
    ssize_t n = write(1, m + done, (size_t)st.st_size - done);

    if (n <= 0) {
      fprintf(stderr, "mapcat %s: write: %s\n", path, strerrorname_np(errno));
      return 1;
    }
    done += (size_t)n;
  }
  munmap((void*)m, (size_t)st.st_size);
  return 0;
}

static int cmd_ring(const char* dev, unsigned peer, unsigned vector) {
  struct ivshm_ring r = {(uint16_t)peer, (uint16_t)vector, 0};
  int fd = open(dev, O_RDWR);

  if (fd < 0 || ioctl(fd, IVSHM_IOC_RING, &r) < 0) {
    fprintf(stderr, "ring %s %u %u: %s\n", dev, peer, vector, strerror(errno));
    return 1;
  }
  close(fd);
  return 0;
}

static int cmd_waitread(const char* dev) {
  uint64_t c;
  ssize_t n;
  int fd = open(dev, O_RDONLY);

  if (fd < 0) {
    fprintf(stderr, "open %s: %s\n", dev, strerror(errno));
    return 1;
  }
  printf("waiting\n");
  fflush(stdout);
  n = read(fd, &c, sizeof(c));
  if (n < 0)
    printf("%s\n", strerrorname_np(errno));
  else
    printf("counter %" PRIu64 "\n", c);
  close(fd);
  return 0;
}

static double now_s(void) {
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Counter of a file opened for @vector, or -1 (errno EAGAIN: none new). */
static int64_t read_counter(int fd) {
  uint64_t c;

  return read(fd, &c, sizeof(c)) == (ssize_t)sizeof(c) ? (int64_t)c : -1;
}

static int open_vector(const char* dev, int32_t vector) {
  int fd = open(dev, O_RDWR | O_NONBLOCK);

  if (fd >= 0 && vector != IVSHM_ALL_VECTORS && ioctl(fd, IVSHM_IOC_WAIT_VECTOR, &vector) < 0) {
    fprintf(stderr, "IVSHM_IOC_WAIT_VECTOR %d: %s\n", vector, strerror(errno));
    close(fd);
    return -1;
  }
  return fd;
}

/*
 * Per peer, a slot of two words at OFF + 64 * id: ready (1 once its files
 * wait) and got (its vector-1 counter once it saw an interrupt).
 */
static int cmd_pingpong(const char* dev, unsigned me, unsigned peer, uint64_t off, unsigned seconds) {
  int all = open_vector(dev, IVSHM_ALL_VECTORS), v1 = open_vector(dev, 1), v0 = open_vector(dev, 0);
  volatile uint64_t *mine, *theirs;
  struct ivshm_ring r = {(uint16_t)peer, 1, 0};
  unsigned char* m;
  uint64_t size;
  int fd, rings = 0;
  double t0 = now_s(), woke = 0, last_ring = 0;
  int64_t c1 = -1;

  if (all < 0 || v1 < 0 || v0 < 0) return 1;
  m = map_region(dev, &fd, &size);
  if (!m || range(size, off, 64 * 256) || me > 255 || peer > 255) return 1;
  mine = (volatile uint64_t*)(m + off + 64 * me);
  theirs = (volatile uint64_t*)(m + off + 64 * peer);
  mine[1] = 0;
  __atomic_store_n(&mine[0], 1, __ATOMIC_SEQ_CST);
  while (now_s() - t0 < seconds && (c1 < 0 || !__atomic_load_n(&theirs[1], __ATOMIC_SEQ_CST))) {
    struct pollfd p = {v1, POLLIN, 0};

    if (__atomic_load_n(&theirs[0], __ATOMIC_SEQ_CST) && !__atomic_load_n(&theirs[1], __ATOMIC_SEQ_CST) &&
        now_s() - last_ring > 0.2) {
      if (ioctl(fd, IVSHM_IOC_RING, &r) < 0) {
        fprintf(stderr, "ring: %s\n", strerror(errno));
        return 1;
      }
      rings++;
      last_ring = now_s();
    }
    if (poll(&p, 1, 100) == 1 && (p.revents & POLLIN) && c1 < 0) {
      woke = now_s() - t0;
      c1 = read_counter(v1);
      __atomic_store_n(&mine[1], (uint64_t)(c1 > 0 ? c1 : 1), __ATOMIC_SEQ_CST);
    }
  }
  {
    int64_t ca = read_counter(all), c0 = read_counter(v0);
    int e0 = errno;

    printf("pingpong: me %u peer %u: rang %d time(s); woke %s after %.2f s; vector-1 counter %" PRId64
           ", all-vectors counter %" PRId64 ", vector-0 read %s; peer got %" PRIu64 "\n",
           me, peer, rings, c1 > 0 ? "" : "never", woke, c1, ca, c0 < 0 ? strerror(e0) : "an event",
           (uint64_t)theirs[1]);
    expect(c1 > 0, "poll() of a file waiting for vector 1 woke and read() returned a counter > 0");
    expect(ca >= c1 && c1 > 0, "the all-vectors file counts the vector-1 interrupts too");
    expect(c0 < 0 && e0 == EAGAIN, "the vector-0 file saw nothing (EAGAIN)");
    expect(theirs[1] > 0, "the peer saw our ring");
  }
  return failures ? 1 : 0;
}

/* Opens OUT once for the messages of ping and echo: a request/reply program
 * keeps its descriptor, so the latency measured is the commit's, not that of
 * an open and a close through the mount (three requests, milliseconds in a
 * TCG guest). */
static int open_out(const char* path) {
  int fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);

  if (fd < 0) fprintf(stderr, "open %s: %s\n", path, strerror(errno));
  return fd;
}

/* Appends one line with a single write(), as an application would. */
static int append_line(int fd, const char* line) {
  size_t len = strlen(line);

  if (write(fd, line, len) != (ssize_t)len) {
    fprintf(stderr, "write: %s\n", strerror(errno));
    return -1;
  }
  return 0;
}

/* Line reader over a follow/ file (reads wait for data). */
struct lines {
  int fd;
  char buf[8192];
  size_t len;
};

static int next_line(struct lines* l, char* out, size_t cap) {
  for (;;) {
    char* nl = memchr(l->buf, '\n', l->len);
    ssize_t n;

    if (nl) {
      size_t k = (size_t)(nl - l->buf);

      if (k >= cap) k = cap - 1;
      memcpy(out, l->buf, k);
      out[k] = 0;
      l->len -= (size_t)(nl - l->buf) + 1;
      memmove(l->buf, nl + 1, l->len);
      return 0;
    }
    if (l->len == sizeof(l->buf)) l->len = 0; /* an overlong line: drop it */
    n = read(l->fd, l->buf + l->len, sizeof(l->buf) - l->len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return -1;
    l->len += (size_t)n;
  }
}

static int cmd_echo(const char* follow, const char* out, const char* tag) {
  struct lines l = {open(follow, O_RDONLY), {0}, 0};
  char line[256], reply[300], mine[128], end[128];
  int out_fd;

  if (l.fd < 0) {
    fprintf(stderr, "open %s: %s\n", follow, strerror(errno));
    return 1;
  }
  if ((out_fd = open_out(out)) < 0) return 1;
  snprintf(mine, sizeof(mine), "ping %s-", tag);
  snprintf(end, sizeof(end), "ping %s end", tag);
  while (next_line(&l, line, sizeof(line)) == 0) {
    if (!strcmp(line, end)) return 0;
    if (strncmp(line, mine, strlen(mine)) != 0) continue;
    snprintf(reply, sizeof(reply), "pong %s\n", line + 5);
    if (append_line(out_fd, reply) != 0) return 1;
  }
  fprintf(stderr, "echo: %s ended\n", follow);
  return 1;
}

static int cmp_double(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;

  return x < y ? -1 : x > y;
}

/* One round trip: "ping TAG-i" out, wait for "pong TAG-i"; seconds or < 0. */
static double round_trip(struct lines* l, int out, const char* tag, int i) {
  char msg[128], want[128], line[256];
  double t0;

  snprintf(msg, sizeof(msg), "ping %s-%d\n", tag, i);
  snprintf(want, sizeof(want), "pong %s-%d", tag, i);
  t0 = now_s();
  if (append_line(out, msg) != 0) return -1;
  while (next_line(l, line, sizeof(line)) == 0) {
    if (!strcmp(line, want)) return now_s() - t0;
  }
  return -1;
}

static int cmd_ping(const char* out, const char* follow, const char* tag, unsigned count, unsigned quiet_ms) {
  struct lines l = {open(follow, O_RDONLY), {0}, 0};
  double* lat = calloc(count ? count : 1, sizeof(double));
  char end[128];
  unsigned i;
  int out_fd;

  if (l.fd < 0 || !lat) {
    fprintf(stderr, "open %s: %s\n", follow, strerror(errno));
    return 1;
  }
  if ((out_fd = open_out(out)) < 0) return 1;
  if (round_trip(&l, out_fd, tag, -1) < 0) return 1; /* warm-up: the echo may start late */
  for (i = 0; i < count; i++) {
    struct timespec q = {quiet_ms / 1000, (long)(quiet_ms % 1000) * 1000000L};
    double rt;

    nanosleep(&q, NULL);
    rt = round_trip(&l, out_fd, tag, (int)i);
    if (rt < 0) {
      fprintf(stderr, "ping: %s ended before pong %s-%u\n", follow, tag, i);
      return 1;
    }
    lat[i] = rt / 2 * 1e6;
  }
  snprintf(end, sizeof(end), "ping %s end\n", tag);
  if (append_line(out_fd, end) != 0) return 1;
  qsort(lat, count, sizeof(double), cmp_double);
  printf("latency %s n=%u p50_us=%.0f p99_us=%.0f max_us=%.0f\n", tag, count, count ? lat[count / 2] : 0.0,
         count ? lat[(count * 99) / 100 < count ? (count * 99) / 100 : count - 1] : 0.0, count ? lat[count - 1] : 0.0);
  free(lat);
  return 0;
}

static uint64_t num(const char* s) { return strtoull(s, NULL, 0); }

int main(int argc, char** argv) {
  const char* cmd = argc > 1 ? argv[1] : "";

  if (!strcmp(cmd, "info") && argc == 3) return cmd_info(argv[2]);
  if (!strcmp(cmd, "selftest") && argc == 3) return cmd_selftest(argv[2]);
  if ((!strcmp(cmd, "fill") || !strcmp(cmd, "check")) && argc == 6)
    return cmd_fill_check(cmd[0] == 'c', argv[2], num(argv[3]), num(argv[4]), num(argv[5]));
  if (!strcmp(cmd, "hold") && argc == 6) return cmd_hold(argv[2], num(argv[3]), num(argv[4]), num(argv[5]));
  if (!strcmp(cmd, "pin") && argc == 4) return cmd_pin(argv[2], num(argv[3]));
  if (!strcmp(cmd, "bench") && argc == 5) return cmd_bench(argv[2], num(argv[3]), (unsigned)num(argv[4]));
  if (!strcmp(cmd, "gen") && argc == 4) return cmd_gen(num(argv[2]), num(argv[3]));
  if (!strcmp(cmd, "append") && argc == 3) return cmd_append(argv[2]);
  if (!strcmp(cmd, "mapcat") && argc == 3) return cmd_mapcat(argv[2]);
  if (!strcmp(cmd, "waitread") && argc == 3) return cmd_waitread(argv[2]);
  if (!strcmp(cmd, "ring") && argc == 5) return cmd_ring(argv[2], (unsigned)num(argv[3]), (unsigned)num(argv[4]));
  if (!strcmp(cmd, "echo") && argc == 5) return cmd_echo(argv[2], argv[3], argv[4]);
  if (!strcmp(cmd, "ping") && argc == 7)
    return cmd_ping(argv[2], argv[3], argv[4], (unsigned)num(argv[5]), (unsigned)num(argv[6]));
  if (!strcmp(cmd, "pingpong") && argc == 7)
    return cmd_pingpong(argv[2], (unsigned)num(argv[3]), (unsigned)num(argv[4]), num(argv[5]), (unsigned)num(argv[6]));
  fprintf(stderr, "usage: see the comment at the top of ivshm-test.c\n");
  return 64;
}
