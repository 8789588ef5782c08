/* SPDX-License-Identifier: MIT */
/*
 * The API of the 2016 report "Shared memory based Inter-VM (application
 * communication)", kept working over ivshmfs regions (library ivshmfs2016).
 *
 * Return conventions are the report's: > 0 on success, < 0 (-1, with errno
 * set) on error. The VM id comes from the hostname ("vm1", "vm1-web", or the
 * report's "1_..." form) unless setVmId() or the IVSHMFS_ID environment
 * variable names it.
 *
 * The report called its last function shutdown(); that name is libc's
 * shutdown(2) for sockets, so it is shutdownMap() here.
 *
 * As in the report, the first writeFromMap() after init() starts the
 * partition afresh; later calls append.
 */
#ifndef IVSHMFS_API2016_H
#define IVSHMFS_API2016_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

struct shared_mem {
  char* filename; /* the region: host file, /dev/ivshmN, PCI resource2 */
  int filesize;   /* bytes; used to create the file when it is missing */
};

/* Maps the region (creating and formatting a missing or blank file with two
 * partitions, as the report did) and claims this VM's partition. Returns 1. */
int init(struct shared_mem* data);
/* Copies VM readVmId's data into recvBuff as a NUL-terminated string (of a
 * ring partition: what it retains, oldest first). The buffer must hold
 * mapPartitionSize() + 1 bytes; prefer readFromMapN().
 * Returns the bytes stored including the terminating NUL (always >= 1). */
int readFromMap(char* recvBuff, int readVmId);
/* Appends the NUL-terminated writeBuff to this VM's partition. Returns the
 * bytes written (> 0); an empty string is -1 with errno EINVAL. */
int writeFromMap(char* writeBuff);
/* Releases the partition and unmaps the region. Returns 1. */
int shutdownMap(void);

/* Additions: length-aware read (at most size - 1 bytes plus NUL, same return
 * convention), an explicit VM id (call before init), and the capacity of one
 * partition (after init). */
int readFromMapN(char* recvBuff, size_t size, int readVmId);
int setVmId(int vmId);
long mapPartitionSize(void);

#ifdef __cplusplus
}
#endif

#endif /* IVSHMFS_API2016_H */
