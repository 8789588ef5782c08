/* SPDX-License-Identifier: MIT */
/*
 * A C11 program using both C headers of the library, ivshmfs.h and
 * api2016.h, the way a peer written in C would. Exits 0 when every check
 * passes; otherwise prints each failed check and exits 1.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ivshmfs/api2016.h"
#include "ivshmfs/ivshmfs.h"
#include "ivshmfs/layout.h"

static int failures = 0;
static int checks = 0;

#define CHECK(cond, what)                                                                                      \
  do {                                                                                                         \
    ++checks;                                                                                                  \
    if (!(cond)) {                                                                                             \
      ++failures;                                                                                              \
      fprintf(stderr, "FAIL line %d: %s (%s); last error: %s\n", __LINE__, what, #cond, ivshmfs_last_error()); \
    }                                                                                                          \
  } while (0)

static void test_c_api(const char* path) {
  struct ivshmfs_open_options options;
  memset(&options, 0, sizeof options);
  options.backend = path;
  options.flags = IVSHMFS_OPEN_WRITE | IVSHMFS_OPEN_CREATE;
  options.id = 3;
  options.create_size = 5 * IVSHMFS_PAGE_SIZE;
  options.create_partitions = 4;

  ivshmfs_region* writer = NULL;
  int r = ivshmfs_open(&options, &writer);
  CHECK(r == 0 && writer != NULL, "ivshmfs_open creates, formats and claims");
  if (writer == NULL) return;
  CHECK(ivshmfs_partition_count(writer) == 4, "partition count");
  CHECK(ivshmfs_own_id(writer) == 3, "own id");

  static const char data[] = "binary\0data";
  CHECK(ivshmfs_append(writer, data, sizeof data) == (ssize_t)sizeof data, "append returns the count");

  struct ivshmfs_open_options reader_options = options;
  reader_options.flags = 0;
  reader_options.id = IVSHMFS_ID_FROM_HOSTNAME;
  ivshmfs_region* reader = NULL;
  CHECK(ivshmfs_open(&reader_options, &reader) == 0, "open for reading");
  if (reader != NULL) {
    char buf[64];
    CHECK(ivshmfs_read(reader, 3, 0, buf, sizeof buf) == (ssize_t)sizeof data, "read returns the count");
    CHECK(memcmp(buf, data, sizeof data) == 0, "read returns the bytes, zero bytes included");
    CHECK(ivshmfs_read(reader, 3, sizeof data, buf, sizeof buf) == 0, "read at the end");
    CHECK(ivshmfs_read(reader, 99, 0, buf, sizeof buf) == -ENOENT, "read of a missing partition");
    CHECK(strstr(ivshmfs_last_error(), "no partition 99") != NULL, "the message names the partition");
    CHECK(ivshmfs_append(reader, "x", 1) == -EBADF, "append without IVSHMFS_OPEN_WRITE");

    struct ivshmfs_partition_stat st;
    CHECK(ivshmfs_stat(reader, 3, &st) == 0, "stat");
    CHECK(st.length == sizeof data, "stat length");
    CHECK(st.capacity == IVSHMFS_PAGE_SIZE, "stat capacity");
    CHECK(st.claimed == 1 && st.alive == 1, "stat owner");
    CHECK(st.owner_pid == (uint64_t)getpid(), "stat owner pid");
    uint64_t generation = st.generation;
    CHECK(ivshmfs_reset(writer) == 0, "reset");
    CHECK(ivshmfs_stat(reader, 3, &st) == 0 && st.length == 0 && st.generation == generation + 2,
          "reset empties and bumps the generation");
    ivshmfs_close(reader);
  }
  ivshmfs_region* second = NULL;
  CHECK(ivshmfs_open(&options, &second) == -EBUSY && second == NULL, "a second writer is refused");
  ivshmfs_close(writer);
  ivshmfs_close(NULL);
  CHECK(ivshmfs_open(&options, &second) == 0, "the partition is free after close");
  ivshmfs_close(second);
}

static void test_api2016(const char* path) {
  char name[256];
  snprintf(name, sizeof name, "%s", path);
  struct shared_mem mem = {name, 3 * IVSHMFS_PAGE_SIZE};
  char buf[IVSHMFS_PAGE_SIZE + 1];

  CHECK(setVmId(0) == 1, "setVmId");
  CHECK(init(&mem) == 1, "init");
  CHECK(mapPartitionSize() == IVSHMFS_PAGE_SIZE, "mapPartitionSize");
  CHECK(writeFromMap("hello from C") == 12, "writeFromMap");
  CHECK(readFromMap(buf, 0) == 13 && strcmp(buf, "hello from C") == 0, "readFromMap");
  CHECK(readFromMap(buf, 1) == 1 && buf[0] == '\0', "readFromMap of an empty partition");
  CHECK(readFromMapN(buf, 6, 0) == 6 && strcmp(buf, "hello") == 0, "readFromMapN");
  errno = 0;
  CHECK(writeFromMap("") == -1 && errno == EINVAL, "writeFromMap of an empty string");
  CHECK(shutdownMap() == 1, "shutdownMap");
  errno = 0;
  CHECK(readFromMap(buf, 0) == -1 && errno == ENOTCONN, "readFromMap after shutdownMap");
}

int main(void) {
  char c_path[128], compat_path[128];
  snprintf(c_path, sizeof c_path, "/dev/shm/ivshmfs-test-c-%ld", (long)getpid());
  snprintf(compat_path, sizeof compat_path, "/dev/shm/ivshmfs-test-c2016-%ld", (long)getpid());
  unlink(c_path);
  unlink(compat_path);
  test_c_api(c_path);
  test_api2016(compat_path);
  unlink(c_path);
  unlink(compat_path);
  if (failures != 0) {
    fprintf(stderr, "%d of %d checks failed\n", failures, checks);
    return 1;
  }
  printf("all %d checks passed\n", checks);
  return 0;
}
