// SPDX-License-Identifier: MIT
// Built against the installed libivshmfs by the clean-room test:
//   c_api_program BACKEND ID
// appends a line to partition ID, reads it back, and reads partition 0.
#define _GNU_SOURCE
#include <ivshmfs/ivshmfs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char** argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s BACKEND ID\n", argv[0]);
    return 2;
  }
  struct ivshmfs_open_options o = {.backend = argv[1], .flags = IVSHMFS_OPEN_WRITE, .id = atoi(argv[2])};
  ivshmfs_region* r;
  if (ivshmfs_open(&o, &r) < 0) {
    fprintf(stderr, "open: %s\n", ivshmfs_last_error());
    return 1;
  }
  const char line[] = "from a C program\n";
  char buf[256];
  int rc = 0;
  if (ivshmfs_append(r, line, strlen(line)) != (ssize_t)strlen(line)) {
    fprintf(stderr, "append: %s\n", ivshmfs_last_error());
    rc = 1;
  }
  ssize_t n = ivshmfs_read(r, (uint32_t)o.id, 0, buf, sizeof buf - 1);
  if (n < 0 || !memmem(buf, (size_t)n, line, strlen(line))) {
    fprintf(stderr, "own partition does not hold the line\n");
    rc = 1;
  }
  n = ivshmfs_read(r, 0, 0, buf, sizeof buf - 1);
  if (n < 0 || !memmem(buf, (size_t)n, "hello from 0", 12)) {
    fprintf(stderr, "partition 0 does not hold 'hello from 0'\n");
    rc = 1;
  }
  ivshmfs_close(r);
  return rc;
}
