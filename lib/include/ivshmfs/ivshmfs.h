/* SPDX-License-Identifier: MIT */
/*
 * ivshmfs C API: open a shared region, append to your own partition, read
 * anyone's. Every function returns 0 or a count on success and a negative
 * errno on failure; ivshmfs_last_error() then says what went wrong, in words.
 * Thread-safe: appends on one handle are serialised.
 */
#ifndef IVSHMFS_H
#define IVSHMFS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ivshmfs_region ivshmfs_region;

/* ivshmfs_open_options.flags */
#define IVSHMFS_OPEN_WRITE 0x1u  /* claim this peer's partition for appending */
#define IVSHMFS_OPEN_CREATE 0x2u /* create and format a missing or blank host file, never a damaged one */
#define IVSHMFS_OPEN_FORCE 0x4u  /* with WRITE: take the partition even from a live owner */

/* ivshmfs_open_options.id: resolve from the hostname (vmN, vmN-name, N_name). */
#define IVSHMFS_ID_FROM_HOSTNAME (-1)

struct ivshmfs_open_options {
  const char* backend;        /* host file, /dev/ivshmN or PCI resource2; NULL: first ivshmem device */
  uint32_t flags;             /* IVSHMFS_OPEN_* */
  int32_t id;                 /* this peer's partition id, or IVSHMFS_ID_FROM_HOSTNAME */
  uint64_t create_size;       /* with CREATE: bytes of a new region */
  uint32_t create_partitions; /* with CREATE: partitions of a new region (0: 4) */
};

/* ivshmfs_partition_stat.flags */
#define IVSHMFS_STAT_RING 0x1u /* a ring: keeps the newest `capacity` bytes */

struct ivshmfs_partition_stat {
  uint32_t id;
  uint32_t claimed; /* 1 if an owner holds the partition */
  uint32_t alive;   /* 1 if that owner is heartbeating */
  uint32_t flags;   /* IVSHMFS_STAT_* */
  uint64_t length;  /* committed bytes (a ring: all written since the last reset) */
  uint64_t capacity;
  uint64_t generation;    /* bumped at every reset */
  uint64_t last_write_ns; /* CLOCK_REALTIME of the last commit or reset */
  uint64_t owner_pid;
  uint64_t owner_since_ns;
  uint64_t owner_heartbeat_ns;
  uint64_t retained_from; /* a ring: offset of the oldest retained byte (= bytes overwritten); else 0 */
};

/* Opens a region. On success *out is a handle for ivshmfs_close(). */
int ivshmfs_open(const struct ivshmfs_open_options* options, ivshmfs_region** out);
/* Appends to this peer's partition (needs IVSHMFS_OPEN_WRITE). Returns bytes
 * appended: fewer than size when the partition fills, -ENOSPC when full. A
 * ring appends everything (overwriting its oldest bytes) and refuses more
 * than its capacity whole with -EFBIG. */
ssize_t ivshmfs_append(ivshmfs_region* handle, const void* data, size_t size);
/* Copies committed bytes of partition id from offset; returns bytes copied, 0 at the end.
 * A ring: -EPIPE when the writer overwrote bytes at offset (before or while
 * they were copied); ivshmfs_stat()'s retained_from says where to go on. */
ssize_t ivshmfs_read(ivshmfs_region* handle, uint32_t id, uint64_t offset, void* buffer, size_t size);
/* Truncates this peer's partition to zero (needs IVSHMFS_OPEN_WRITE). */
int ivshmfs_reset(ivshmfs_region* handle);
int ivshmfs_stat(ivshmfs_region* handle, uint32_t id, struct ivshmfs_partition_stat* out);
/* Number of partitions, and this peer's id (-1 when opened without WRITE and no id). */
uint32_t ivshmfs_partition_count(const ivshmfs_region* handle);
int32_t ivshmfs_own_id(const ivshmfs_region* handle);
/* Releases the claim and unmaps. NULL is allowed. */
void ivshmfs_close(ivshmfs_region* handle);
/* The message of this thread's last failure ("" if none). */
const char* ivshmfs_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* IVSHMFS_H */
