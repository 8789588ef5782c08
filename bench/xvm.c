// SPDX-License-Identifier: MIT
/*
 * ivshm-xvm: the transfers of the guest-to-guest benchmark (issue 13), run in
 * two guests (and the host) by scripts/guest/scenarios/xvm.sh. The peers agree
 * on when to start through a control area, a mapping of CTL (the second
 * ivshmem device, or its host file): a barrier slot, a "done" slot and a
 * progress slot per peer (0, 1, the host 2). Nothing here judges a figure.
 *
 *   ivshm-xvm barrier CTL ME STEP PEER...
 *       publish STEP in slot ME, wait until every PEER's slot reached STEP
 *   ivshm-xvm prepare ENDPOINT
 *       make ENDPOINT's incoming side empty before a barrier (a raw ring's
 *       indices to zero, a file created empty, a partition reset)
 *   ivshm-xvm send ENDPOINT CTL ME STEP PEER SEED LEN [WINDOW]
 *       after the barrier STEP (ME and PEER), write LEN bytes of pattern SEED
 *       in 1 MiB pieces, then wait until PEER marks STEP done; prints
 *       "bulk bytes=LEN seconds=S mib_s=M" (time from the first write to the
 *       receiver's mark). WINDOW > 0: never get more than WINDOW bytes ahead
 *       of what PEER reported read (a ring that must not be lapped).
 *   ivshm-xvm recv ENDPOINT CTL ME STEP PEER LEN
 *       after the barrier, read LEN bytes, mark STEP done, then print
 *       "recv bytes=LEN seconds=S overruns=N sha256=HEX" (S: first to last
 *       byte as seen here; the hash runs after the clock stops)
 *   ivshm-xvm ping OUT IN CTL ME STEP PEER SEED COUNT
 *   ivshm-xvm pong IN OUT CTL ME STEP PEER COUNT
 *       64-byte round trips: ping sends message i (bytes 64i.. of pattern
 *       SEED), pong echoes it, ping checks the echo byte for byte. Five
 *       warm-up round trips are not timed. ping prints "rtt n=COUNT p50_us=..
 *       p99_us=.. max_us=.. sha256=HEX" (the hash of every echo received)
 *   ivshm-xvm gen SEED LEN
 *       pattern SEED to stdout (the host hashes it to check the receivers)
 *   ivshm-xvm floors
 *       what this system's own primitives cost, the bounds of every
 *       transport that uses them: a copy in user space (memcpy) and by the
 *       kernel (pread of a file in the page cache, the copy FUSE makes of
 *       each request's and reply's data), both in 1 MiB pieces as the
 *       transfers make them, and a 1-byte round trip through
 *       two pipes between two processes (FUSE's request and reply: the
 *       kernel switches address spaces) and between two threads of one
 *       process; prints "floors memcpy_mib_s=.. kernel_copy_mib_s=..
 *       process_rtt_p50_us=.. thread_rtt_p50_us=.."
 *
 * IVSHM_XVM_WAIT: seconds to wait for a peer or for data before failing (300).
 *
 * ENDPOINT is one of
 *   file:PATH      a file written with O_APPEND and read with read() that
 *                  waits (follow/vmN of an ivshmfs mount)
 *   tail:PATH      a file read by retrying at its end (virtiofs, 9p)
 *   tcp:ADDR:PORT  a TCP connection: the receiving side listens on PORT, the
 *                  sending side connects to ADDR (ping/pong: pong listens)
 *   lib:BACKEND:ID the ivshmfs C API: appends to this peer's partition ID or
 *                  reads partition ID, polling for new bytes
 *   raw:PATH:OFF[:SIZE]
 *                  a single-producer single-consumer ring in a mapping of
 *                  PATH at OFF: a 4 KiB header (the two indices), then SIZE
 *                  bytes of data (default 4 MiB): the floor
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ivshmfs/ivshmfs.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { PIECE = 1 << 20, MSG = 64, WARMUP = 5, MAX_PEERS = 4 };
/* A raw ring's default data size: four pieces, the producer fills one while the consumer drains another. */
enum { RAW_HEADER = 4096, RAW_DATA = 4 << 20 };
/* The longest wait for a peer before giving up: IVSHM_XVM_WAIT seconds (default 300). */
static double wait_limit(void) {
  const char* s = getenv("IVSHM_XVM_WAIT");
  double v = s ? atof(s) : 0;

  return v > 0 ? v : 300;
}

static double now_s(void) {
  struct timespec t;

  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static __attribute__((noreturn, format(printf, 1, 2))) void die(const char* fmt, ...) {
  va_list ap;

  va_start(ap, fmt);
  fputs("ivshm-xvm: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(1);
}

static uint64_t num(const char* s) {
  char* end;
  uint64_t v;

  errno = 0;
  v = strtoull(s, &end, 0);
  if (errno || end == s || *end) die("'%s' is not a number", s);
  return v;
}

/* Byte i of pattern SEED depends only on (SEED, i): one 64-bit word per 8 bytes. */
static void pattern(uint64_t seed, uint64_t off, unsigned char* buf, size_t len) {
  for (size_t i = 0; i < len; i++) {
    uint64_t w = ((off + i) >> 3) ^ (seed * 0x9E3779B97F4A7C15ULL);

    w ^= w >> 33;
    w *= 0xff51afd7ed558ccdULL;
    w ^= w >> 33;
    w *= 0xc4ceb9fe1a85ec53ULL;
    w ^= w >> 33;
    buf[i] = (unsigned char)(w >> (8 * ((off + i) & 7)));
  }
}

static unsigned char* xalloc(size_t len) {
  unsigned char* p = malloc(len ? len : 1);

  if (!p) die("out of memory (%zu bytes)", len);
  return p;
}

/* sha256 of a buffer through sha256sum (busybox in the guests, coreutils on the host). */
static void sha256_hex(const unsigned char* buf, size_t len, char out[65]) {
  char tmpl[] = "/tmp/ivshm-xvm-XXXXXX", cmd[96];
  int fd = mkstemp(tmpl);
  FILE* p;
  size_t done = 0;

  if (fd < 0) die("mkstemp: %s", strerror(errno));
  while (done < len) {
    ssize_t n = write(fd, buf + done, len - done);

    if (n <= 0) die("writing %s: %s", tmpl, strerror(errno));
    done += (size_t)n;
  }
  close(fd);
  snprintf(cmd, sizeof(cmd), "sha256sum %s", tmpl);
  p = popen(cmd, "r");
  if (!p || fscanf(p, "%64s", out) != 1) die("sha256sum failed");
  pclose(p);
  unlink(tmpl);
}

/* ---- the control area ---- */

struct ctl {
  volatile uint64_t* base;
};

static volatile uint64_t* slot(struct ctl* c, unsigned kind, unsigned id) { return c->base + kind * 128 + id * 8; }
enum { SLOT_BARRIER = 0, SLOT_DONE = 1, SLOT_PROGRESS = 2 };

static void* map_at(const char* path, uint64_t off, uint64_t len, int writable) {
  int fd = open(path, O_RDWR);
  void* p;

  if (fd < 0) die("open %s: %s", path, strerror(errno));
  p = mmap(NULL, len, PROT_READ | (writable ? PROT_WRITE : 0), MAP_SHARED, fd, (off_t)off);
  close(fd);
  if (p == MAP_FAILED) die("mmap %s (%llu bytes): %s", path, (unsigned long long)len, strerror(errno));
  return p;
}

static struct ctl ctl_open(const char* path) {
  struct ctl c = {map_at(path, 0, 4096, 1)};

  return c;
}

static uint64_t load(volatile uint64_t* p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static void store(volatile uint64_t* p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

/* Spins for SPIN_S, then sleeps NAP_NS between looks: a peer waiting at a
 * barrier for minutes (the host while the guests run, a guest while the
 * other one works) must not take a core from the two guests, whose vCPUs
 * are all the machine's cores can run here. */
static void wait_slot_for(struct ctl* c, unsigned kind, unsigned id, uint64_t at_least, const char* what, double spin_s,
                          long nap_ns) {
  double t0 = now_s();
  unsigned spins = 0;

  while (load(slot(c, kind, id)) < at_least) {
    if (++spins % 4096 == 0) {
      double waited = now_s() - t0;

      if (waited > wait_limit()) die("peer %u never reached %s %llu", id, what, (unsigned long long)at_least);
      if (waited > spin_s) {
        struct timespec nap = {0, nap_ns};

        nanosleep(&nap, NULL);
      } else {
        sched_yield();
      }
    }
  }
}

/* The receiver's mark ends a timed transfer: look often (50 µs) once the first 20 ms passed. */
static void wait_slot(struct ctl* c, unsigned kind, unsigned id, uint64_t at_least, const char* what) {
  wait_slot_for(c, kind, id, at_least, what, 0.02, 50000);
}

/* Nothing is timed across a barrier: after 1 ms, look every millisecond. */
static void barrier(struct ctl* c, unsigned me, uint64_t step, const unsigned* peers, int npeers) {
  store(slot(c, SLOT_BARRIER, me), step);
  for (int i = 0; i < npeers; i++) wait_slot_for(c, SLOT_BARRIER, peers[i], step, "barrier", 0.001, 1000000);
}

static unsigned peer_id(const char* s) {
  uint64_t v = num(s);

  if (v >= MAX_PEERS) die("peer id %s is out of range", s);
  return (unsigned)v;
}

/* ---- endpoints ---- */

enum kind { K_FILE, K_TAIL, K_TCP, K_LIB, K_RAW };

struct raw_ring {
  volatile uint64_t* head; /* bytes produced */
  volatile uint64_t* tail; /* bytes consumed */
  unsigned char* data;
  size_t size; /* bytes of data */
};

struct endpoint {
  enum kind kind;
  char path[256];
  char addr[64];
  unsigned port;
  uint32_t id;
  uint64_t off;
  int fd;
  uint64_t pos; /* lib: next offset to read */
  ivshmfs_region* region;
  struct raw_ring ring;
};

static void parse(const char* spec, struct endpoint* e) {
  const char* rest = strchr(spec, ':');
  const char* last;

  memset(e, 0, sizeof(*e));
  e->fd = -1;
  if (!rest) die("endpoint '%s' has no kind:", spec);
  last = strrchr(spec, ':');
  if (!strncmp(spec, "file:", 5) || !strncmp(spec, "tail:", 5)) {
    e->kind = spec[0] == 'f' ? K_FILE : K_TAIL;
    snprintf(e->path, sizeof(e->path), "%s", rest + 1);
  } else if (!strncmp(spec, "tcp:", 4) && last != rest) {
    e->kind = K_TCP;
    snprintf(e->addr, sizeof(e->addr), "%.*s", (int)(last - rest - 1), rest + 1);
    e->port = (unsigned)num(last + 1);
  } else if (!strncmp(spec, "lib:", 4) && last != rest) {
    e->kind = K_LIB;
    snprintf(e->path, sizeof(e->path), "%.*s", (int)(last - rest - 1), rest + 1);
    e->id = (uint32_t)num(last + 1);
  } else if (!strncmp(spec, "raw:", 4) && last != rest) {
    const char* off = strchr(rest + 1, ':');
    char field[32];

    e->kind = K_RAW;
    e->ring.size = RAW_DATA;
    snprintf(e->path, sizeof(e->path), "%.*s", (int)(off - rest - 1), rest + 1);
    if (off != last) {
      snprintf(field, sizeof(field), "%.*s", (int)(last - off - 1), off + 1);
      e->off = num(field);
      e->ring.size = (size_t)num(last + 1);
    } else {
      e->off = num(off + 1);
    }
    if (e->ring.size == 0) die("endpoint '%s': a ring needs a size", spec);
  } else {
    die("endpoint '%s' is not file:PATH, tail:PATH, tcp:ADDR:PORT, lib:BACKEND:ID or raw:PATH:OFF[:SIZE]", spec);
  }
}

/* The indices writable, the data writable only for the producer: a consumer
 * maps it read-only, as the library's readers do. */
static void raw_map(struct endpoint* e, int producer) {
  unsigned char* header;

  if (e->off % 4096) die("raw ring offset %llu is not page aligned", (unsigned long long)e->off);
  header = map_at(e->path, e->off, RAW_HEADER, 1);
  e->ring.head = (volatile uint64_t*)header;
  e->ring.tail = (volatile uint64_t*)(header + 64);
  e->ring.data = map_at(e->path, e->off + RAW_HEADER, e->ring.size, producer);
}

static void lib_open(struct endpoint* e, int write) {
  struct ivshmfs_open_options o = {e->path, write ? IVSHMFS_OPEN_WRITE : 0, write ? (int32_t)e->id : -1, 0, 0};
  int rc = ivshmfs_open(&o, &e->region);

  if (rc < 0) die("ivshmfs_open %s: %s", e->path, ivshmfs_last_error());
}

static int tcp_listen(unsigned port) {
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  int one = 1, fd = socket(AF_INET, SOCK_STREAM, 0);

  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (fd < 0 || bind(fd, (struct sockaddr*)&a, sizeof(a)) < 0 || listen(fd, 1) < 0)
    die("listen on port %u: %s", port, strerror(errno));
  return fd;
}

static void tcp_nodelay(int fd) {
  int one = 1;

  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static int tcp_accept(int lfd) {
  int fd = accept(lfd, NULL, NULL);

  if (fd < 0) die("accept: %s", strerror(errno));
  close(lfd);
  tcp_nodelay(fd);
  return fd;
}

static int tcp_connect(const char* addr, unsigned port) {
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  double t0 = now_s();

  if (inet_pton(AF_INET, addr, &a.sin_addr) != 1) die("'%s' is not an IPv4 address", addr);
  for (;;) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    if (connect(fd, (struct sockaddr*)&a, sizeof(a)) == 0) {
      tcp_nodelay(fd);
      return fd;
    }
    close(fd);
    if (now_s() - t0 > 30) die("connect to %s:%u: %s", addr, port, strerror(errno));
    usleep(10000);
  }
}

/* The sending side before the barrier: what can be opened early. */
static void open_out_early(struct endpoint* e) {
  switch (e->kind) {
    case K_FILE:
    case K_TAIL:
      e->fd = open(e->path, O_WRONLY | O_APPEND);
      if (e->fd < 0) die("open %s for appending: %s", e->path, strerror(errno));
      break;
    case K_LIB: lib_open(e, 1); break;
    case K_RAW:
      raw_map(e, 1);
      /* Map every page of the ring before the clock runs, as the other kinds do at open. */
      memset(e->ring.data, 0, e->ring.size);
      break;
    case K_TCP: break; /* connects after the barrier: the other side listens by then */
  }
}

static void open_in_early(struct endpoint* e) {
  switch (e->kind) {
    case K_FILE:
    case K_TAIL:
      e->fd = open(e->path, O_RDONLY);
      if (e->fd < 0) die("open %s: %s", e->path, strerror(errno));
      break;
    case K_LIB: lib_open(e, 0); break;
    case K_RAW: {
      volatile unsigned char sink = 0;

      raw_map(e, 0);
      for (size_t i = 0; i < e->ring.size; i += 4096) sink ^= e->ring.data[i];
      (void)sink;
      break;
    }
    case K_TCP: e->fd = tcp_listen(e->port); break;
  }
}

static void open_out_late(struct endpoint* e) {
  if (e->kind == K_TCP && e->fd < 0) e->fd = tcp_connect(e->addr, e->port);
}

static void open_in_late(struct endpoint* e) {
  if (e->kind == K_TCP) e->fd = tcp_accept(e->fd);
}

static void write_all(struct endpoint* e, const unsigned char* buf, size_t len) {
  size_t done = 0;

  while (done < len) {
    switch (e->kind) {
      case K_FILE:
      case K_TAIL:
      case K_TCP: {
        ssize_t n = write(e->fd, buf + done, len - done);

        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) die("write: %s", n < 0 ? strerror(errno) : "wrote nothing");
        done += (size_t)n;
        break;
      }
      case K_LIB: {
        ssize_t n = ivshmfs_append(e->region, buf + done, len - done);

        if (n <= 0) die("ivshmfs_append: %s", ivshmfs_last_error());
        done += (size_t)n;
        break;
      }
      case K_RAW: {
        uint64_t head = *e->ring.head, tail = load(e->ring.tail);
        size_t cap = e->ring.size, room = cap - (size_t)(head - tail), n, at, first;
        unsigned spins = 0;

        while (room == 0) {
          if (++spins % 4096 == 0) sched_yield();
          tail = load(e->ring.tail);
          room = cap - (size_t)(head - tail);
        }
        n = len - done < room ? len - done : room;
        at = (size_t)(head % cap);
        first = cap - at < n ? cap - at : n;
        memcpy(e->ring.data + at, buf + done, first);
        memcpy(e->ring.data, buf + done + first, n - first);
        store(e->ring.head, head + n);
        done += n;
        break;
      }
    }
  }
}

/* Up to len bytes, at least one; counts EPIPE (a ring lapped the reader). */
static size_t read_some(struct endpoint* e, unsigned char* buf, size_t len, uint64_t* overruns) {
  double t0 = 0;
  unsigned spins = 0;

  for (;;) {
    ssize_t n = 0;

    switch (e->kind) {
      case K_FILE:
      case K_TAIL:
      case K_TCP:
        n = read(e->fd, buf, len);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EPIPE) {
          ++*overruns;
          continue;
        }
        if (n < 0) die("read: %s", strerror(errno));
        if (n == 0 && e->kind != K_TAIL) die("read: end of file before all bytes arrived");
        break;
      case K_LIB:
        n = ivshmfs_read(e->region, e->id, e->pos, buf, len);
        if (n == -EPIPE) {
          struct ivshmfs_partition_stat st;

          ++*overruns;
          if (ivshmfs_stat(e->region, e->id, &st) < 0) die("ivshmfs_stat: %s", ivshmfs_last_error());
          e->pos = st.retained_from;
          continue;
        }
        if (n < 0) die("ivshmfs_read: %s", ivshmfs_last_error());
        e->pos += (uint64_t)n;
        break;
      case K_RAW: {
        uint64_t tail = *e->ring.tail, head = load(e->ring.head);
        size_t cap = e->ring.size, avail = (size_t)(head - tail), at, first;

        if (avail == 0) break;
        n = (ssize_t)(len < avail ? len : avail);
        at = (size_t)(tail % cap);
        first = cap - at < (size_t)n ? cap - at : (size_t)n;
        memcpy(buf, e->ring.data + at, first);
        memcpy(buf + first, e->ring.data, (size_t)n - first);
        store(e->ring.tail, tail + (uint64_t)n);
        break;
      }
    }
    if (n > 0) return (size_t)n;
    if (++spins % 1024 == 0) {
      if (t0 == 0) t0 = now_s();
      if (now_s() - t0 > wait_limit()) die("no data for %.0f s", wait_limit());
      sched_yield();
    }
  }
}

static void read_exact(struct endpoint* e, unsigned char* buf, size_t len, uint64_t* overruns) {
  size_t done = 0;

  while (done < len) done += read_some(e, buf + done, len - done, overruns);
}

/* ---- commands ---- */

static int cmd_prepare(const char* spec) {
  struct endpoint e;

  parse(spec, &e);
  switch (e.kind) {
    case K_RAW:
      raw_map(&e, 0);
      store(e.ring.head, 0);
      store(e.ring.tail, 0);
      break;
    case K_FILE:
    case K_TAIL: {
      int fd = open(e.path, O_WRONLY | O_CREAT | O_TRUNC, 0644);

      if (fd < 0) die("create %s: %s", e.path, strerror(errno));
      close(fd);
      break;
    }
    case K_LIB:
      lib_open(&e, 1);
      if (ivshmfs_reset(e.region) < 0) die("ivshmfs_reset: %s", ivshmfs_last_error());
      ivshmfs_close(e.region);
      break;
    case K_TCP: break;
  }
  return 0;
}

static int cmd_send(char** a, int argc) {
  struct endpoint e;
  struct ctl c = ctl_open(a[1]);
  unsigned me = peer_id(a[2]), peer = peer_id(a[4]);
  uint64_t step = num(a[3]), seed = num(a[5]), len = num(a[6]), window = argc > 7 ? num(a[7]) : 0;
  unsigned char* buf = xalloc(len);
  unsigned peers[] = {peer};
  double t0, t1;

  parse(a[0], &e);
  pattern(seed, 0, buf, len);
  open_out_early(&e);
  barrier(&c, me, step, peers, 1);
  open_out_late(&e);
  t0 = now_s();
  for (uint64_t off = 0; off < len;) {
    size_t n = len - off < PIECE ? (size_t)(len - off) : PIECE;

    if (window) {
      if (n > window / 2) n = (size_t)(window / 2);
      wait_slot(&c, SLOT_PROGRESS, peer, off + n > window ? off + n - window : 0, "progress");
    }
    write_all(&e, buf + off, n);
    off += n;
  }
  wait_slot(&c, SLOT_DONE, peer, step, "done");
  t1 = now_s();
  printf("bulk bytes=%llu seconds=%.4f mib_s=%.1f\n", (unsigned long long)len, t1 - t0,
         (double)len / (1 << 20) / (t1 - t0));
  return 0;
}

static int cmd_recv(char** a) {
  struct endpoint e;
  struct ctl c = ctl_open(a[1]);
  unsigned me = peer_id(a[2]), peer = peer_id(a[4]);
  uint64_t step = num(a[3]), len = num(a[5]), overruns = 0;
  unsigned char* buf = xalloc(len);
  unsigned peers[] = {peer};
  double t0 = 0, t1;
  char sha[65];

  parse(a[0], &e);
  memset(buf, 0, len); /* fault the buffer in before the clock runs */
  store(slot(&c, SLOT_PROGRESS, me), 0);
  open_in_early(&e);
  barrier(&c, me, step, peers, 1);
  open_in_late(&e);
  for (uint64_t off = 0; off < len;) {
    size_t want = len - off < PIECE ? (size_t)(len - off) : PIECE;

    off += read_some(&e, buf + off, want, &overruns);
    if (t0 == 0) t0 = now_s();
    __atomic_store_n(slot(&c, SLOT_PROGRESS, me), off, __ATOMIC_RELAXED);
  }
  store(slot(&c, SLOT_DONE, me), step);
  t1 = now_s();
  sha256_hex(buf, len, sha);
  printf("recv bytes=%llu seconds=%.4f overruns=%llu sha256=%s\n", (unsigned long long)len, t1 - t0,
         (unsigned long long)overruns, sha);
  return 0;
}

static int cmp_double(const void* x, const void* y) {
  double a = *(const double*)x, b = *(const double*)y;

  return a < b ? -1 : a > b;
}

/* ping OUT IN CTL ME STEP PEER SEED COUNT; pong IN OUT CTL ME STEP PEER COUNT */
static int cmd_pingpong(int is_ping, char** a) {
  struct endpoint out, in;
  struct ctl c = ctl_open(a[2]);
  unsigned me = peer_id(a[3]), peer = peer_id(a[5]);
  uint64_t step = num(a[4]), seed = is_ping ? num(a[6]) : 0, overruns = 0;
  unsigned count = (unsigned)num(a[is_ping ? 7 : 6]), total = count + WARMUP;
  unsigned char *sent = xalloc((size_t)total * MSG), *got = xalloc((size_t)total * MSG);
  double* rtt = calloc(count ? count : 1, sizeof(double));
  unsigned peers[] = {peer};

  if (!rtt) die("out of memory");
  parse(a[is_ping ? 0 : 1], &out);
  parse(a[is_ping ? 1 : 0], &in);
  if (is_ping) pattern(seed, 0, sent, (size_t)total * MSG);
  /* One TCP connection carries both directions: pong listens, ping connects. */
  if (in.kind == K_TCP) {
    if (!is_ping) in.fd = tcp_listen(in.port);
    open_out_early(&out);
  } else {
    open_in_early(&in);
    open_out_early(&out);
  }
  barrier(&c, me, step, peers, 1);
  if (in.kind == K_TCP) {
    if (is_ping) {
      out.fd = in.fd = tcp_connect(in.addr, in.port);
    } else {
      in.fd = out.fd = tcp_accept(in.fd);
    }
  }
  for (unsigned i = 0; i < total; i++) {
    unsigned char* msg = got + (size_t)i * MSG;

    if (is_ping) {
      double t0 = now_s();

      write_all(&out, sent + (size_t)i * MSG, MSG);
      read_exact(&in, msg, MSG, &overruns);
      if (i >= WARMUP) rtt[i - WARMUP] = (now_s() - t0) * 1e6;
      if (memcmp(msg, sent + (size_t)i * MSG, MSG) != 0) die("round trip %u came back changed", i);
    } else {
      read_exact(&in, msg, MSG, &overruns);
      write_all(&out, msg, MSG);
    }
  }
  if (is_ping) {
    char sha[65];

    sha256_hex(got, (size_t)total * MSG, sha);
    qsort(rtt, count, sizeof(double), cmp_double);
    printf("rtt n=%u p50_us=%.1f p99_us=%.1f max_us=%.1f sha256=%s\n", count, count ? rtt[count / 2] : 0.0,
           count ? rtt[(size_t)count * 99 / 100 < count ? (size_t)count * 99 / 100 : count - 1] : 0.0,
           count ? rtt[count - 1] : 0.0, sha);
  } else {
    printf("pong n=%u\n", total);
  }
  return 0;
}

static int cmd_gen(uint64_t seed, uint64_t len) {
  unsigned char* buf = xalloc(PIECE);

  for (uint64_t off = 0; off < len;) {
    size_t n = len - off < PIECE ? (size_t)(len - off) : PIECE;

    pattern(seed, off, buf, n);
    if (fwrite(buf, 1, n, stdout) != n) die("writing stdout: %s", strerror(errno));
    off += n;
  }
  return fflush(stdout) == 0 ? 0 : 1;
}

/* ---- floors: what the system's own primitives cost ---- */
enum { FLOOR_BYTES = 16 << 20, FLOOR_PASSES = 4, FLOOR_TRIES = 5, FLOOR_ROUNDS = 2000 };

/* MiB/s of the best of FLOOR_TRIES runs of FLOOR_PASSES passes over FLOOR_BYTES. */
static double best_rate(double seconds[FLOOR_TRIES]) {
  double best = seconds[0];

  for (int i = 1; i < FLOOR_TRIES; i++) best = seconds[i] < best ? seconds[i] : best;
  return (double)FLOOR_BYTES * FLOOR_PASSES / (1 << 20) / best;
}

static double memcpy_rate(unsigned char* from, unsigned char* to) {
  double t[FLOOR_TRIES];

  for (int k = 0; k < FLOOR_TRIES; k++) {
    double t0 = now_s();

    for (int pass = 0; pass < FLOOR_PASSES; pass++) {
      for (size_t off = 0; off < FLOOR_BYTES; off += PIECE) memcpy(to + off, from + off, PIECE);
      __asm__ __volatile__("" : : "r"(to) : "memory"); /* the copy is not optimized away */
    }
    t[k] = now_s() - t0;
  }
  return best_rate(t);
}

/* A file in the page cache (tmpfs), read back in 1 MiB pieces: the kernel's copy to user space. */
static double kernel_copy_rate(const unsigned char* data, unsigned char* to) {
  char path[] = "/tmp/ivshm-xvm-floor-XXXXXX";
  int fd = mkstemp(path);
  double t[FLOOR_TRIES];

  if (fd < 0) die("floors: a file in /tmp: %s", strerror(errno));
  unlink(path);
  if (write(fd, data, FLOOR_BYTES) != FLOOR_BYTES) die("floors: writing the file: %s", strerror(errno));
  for (int k = 0; k < FLOOR_TRIES; k++) {
    double t0 = now_s();

    for (int pass = 0; pass < FLOOR_PASSES; pass++) {
      for (off_t off = 0; off < FLOOR_BYTES; off += PIECE) {
        if (pread(fd, to + off, PIECE, off) != PIECE) die("floors: reading the file: %s", strerror(errno));
      }
    }
    t[k] = now_s() - t0;
  }
  close(fd);
  return best_rate(t);
}

struct pipes {
  int there[2], back[2];
};

static void* echo_thread(void* arg) {
  struct pipes* p = arg;
  char c;

  while (read(p->there[0], &c, 1) == 1) {
    if (write(p->back[1], &c, 1) != 1) break;
  }
  return NULL;
}

/* p50 of FLOOR_ROUNDS 1-byte round trips to the echo at the other end of P. */
static double pipe_rtt_p50(struct pipes* p) {
  double* rtt = calloc(FLOOR_ROUNDS, sizeof(double));
  char c = 'x';
  double p50;

  if (!rtt) die("out of memory");
  for (int i = 0; i < FLOOR_ROUNDS + WARMUP; i++) {
    double t0 = now_s();

    if (write(p->there[1], &c, 1) != 1 || read(p->back[0], &c, 1) != 1) die("floors: pipe: %s", strerror(errno));
    if (i >= WARMUP) rtt[i - WARMUP] = (now_s() - t0) * 1e6;
  }
  qsort(rtt, FLOOR_ROUNDS, sizeof(double), cmp_double);
  p50 = rtt[FLOOR_ROUNDS / 2];
  free(rtt);
  return p50;
}

static void open_pipes(struct pipes* p) {
  if (pipe(p->there) || pipe(p->back)) die("floors: pipe: %s", strerror(errno));
}

static void close_pipes(struct pipes* p) {
  close(p->there[1]); /* the echo reads end of file and stops */
  close(p->back[0]);
}

static int cmd_floors(void) {
  unsigned char *a = xalloc(FLOOR_BYTES), *b = xalloc(FLOOR_BYTES);
  struct pipes proc, thr;
  pthread_t t;
  pid_t child;
  double user, kernel, process_rtt, thread_rtt;

  pattern(1, 0, a, FLOOR_BYTES);
  memset(b, 0, FLOOR_BYTES);
  user = memcpy_rate(a, b);
  kernel = kernel_copy_rate(a, b);
  open_pipes(&proc);
  child = fork();
  if (child < 0) die("floors: fork: %s", strerror(errno));
  if (child == 0) {
    close(proc.there[1]);
    close(proc.back[0]);
    echo_thread(&proc);
    _exit(0);
  }
  close(proc.there[0]);
  close(proc.back[1]);
  process_rtt = pipe_rtt_p50(&proc);
  close_pipes(&proc);
  waitpid(child, NULL, 0);
  open_pipes(&thr);
  if (pthread_create(&t, NULL, echo_thread, &thr)) die("floors: a thread: %s", strerror(errno));
  thread_rtt = pipe_rtt_p50(&thr);
  close_pipes(&thr);
  pthread_join(t, NULL);
  printf("floors memcpy_mib_s=%.0f kernel_copy_mib_s=%.0f process_rtt_p50_us=%.1f thread_rtt_p50_us=%.1f\n", user,
         kernel, process_rtt, thread_rtt);
  free(a);
  free(b);
  return 0;
}

int main(int argc, char** argv) {
  const char* cmd = argc > 1 ? argv[1] : "";

  setvbuf(stdout, NULL, _IOLBF, 0);
  if (!strcmp(cmd, "barrier") && argc >= 6) {
    struct ctl c = ctl_open(argv[2]);
    unsigned peers[MAX_PEERS];
    int n = 0;

    for (int i = 5; i < argc && n < MAX_PEERS; i++) peers[n++] = peer_id(argv[i]);
    barrier(&c, peer_id(argv[3]), num(argv[4]), peers, n);
    return 0;
  }
  if (!strcmp(cmd, "prepare") && argc == 3) return cmd_prepare(argv[2]);
  if (!strcmp(cmd, "send") && (argc == 9 || argc == 10)) return cmd_send(argv + 2, argc - 2);
  if (!strcmp(cmd, "recv") && argc == 8) return cmd_recv(argv + 2);
  if (!strcmp(cmd, "ping") && argc == 10) return cmd_pingpong(1, argv + 2);
  if (!strcmp(cmd, "pong") && argc == 9) return cmd_pingpong(0, argv + 2);
  if (!strcmp(cmd, "gen") && argc == 4) return cmd_gen(num(argv[2]), num(argv[3]));
  if (!strcmp(cmd, "floors") && argc == 2) return cmd_floors();
  fprintf(stderr, "usage: see the comment at the top of bench/xvm.c\n");
  return 64;
}
