/* SPDX-License-Identifier: MIT */
/*
 * The 2016 report's test application: a menu to read another VM's partition
 * or write to this VM's, through init / readFromMap / writeFromMap /
 * shutdownMap.
 *
 *   report2016_menu [FILE [SIZE]]      (default /dev/shm/ivshm, 1048576)
 *
 * The VM id comes from the hostname (vm1, 1_...) or the IVSHMFS_ID variable.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ivshmfs/api2016.h"

int main(int argc, char** argv) {
  struct shared_mem mem = {argc > 1 ? argv[1] : "/dev/shm/ivshm", argc > 2 ? atoi(argv[2]) : 1048576};
  if (init(&mem) < 0) {
    fprintf(stderr, "init(%s): %s\n", mem.filename, strerror(errno));
    return 1;
  }
  long capacity = mapPartitionSize();
  char* buffer = malloc((size_t)capacity + 1);
  char line[4096];
  if (buffer == NULL) return 1;
  for (;;) {
    printf("1. Read\n2. Write\n3. Exit\nChoice: ");
    fflush(stdout);
    if (fgets(line, sizeof line, stdin) == NULL) break;
    int choice = atoi(line);
    if (choice == 1) {
      printf("VM id to read: ");
      fflush(stdout);
      if (fgets(line, sizeof line, stdin) == NULL) break;
      if (readFromMap(buffer, atoi(line)) < 0)
        printf("read failed: %s\n", strerror(errno));
      else
        printf("%s\n", buffer);
    } else if (choice == 2) {
      printf("Text to write: ");
      fflush(stdout);
      if (fgets(line, sizeof line, stdin) == NULL) break;
      line[strcspn(line, "\n")] = '\0';
      if (writeFromMap(line) < 0) printf("write failed: %s\n", strerror(errno));
    } else if (choice == 3) {
      break;
    } else {
      printf("unknown choice\n");
    }
  }
  free(buffer);
  shutdownMap();
  return 0;
}
