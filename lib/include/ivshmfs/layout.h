/* SPDX-License-Identifier: MIT */
/*
 * ivshmfs region layout, version 2: the single definition of the bytes in
 * the shared region. Every peer, in any language, must agree with this file;
 * docs/layout.md describes the same layout in prose.
 *
 * All integers are little-endian, fixed width, naturally aligned. Positions
 * are byte offsets from the start of the region, never pointers: every peer
 * maps the region at a different address.
 *
 *   offset 0                      struct ivshmfs_header        (128 bytes)
 *   offset 128                    struct ivshmfs_partition_entry[partition_count]
 *   control_offset (128-aligned)  struct ivshmfs_control[partition_count]
 *   data areas (page-aligned)     one per partition, capacity bytes each
 *
 * The header and the partition table are written once, by `format`, and are
 * read-only afterwards, except in a region with IVSHMFS_FEATURE_LIVE_TABLE,
 * whose table entries (and its table_seq and table_lock words) change. The control blocks are live: they are only
 * accessed with 64-bit atomic loads, stores and compare-and-swaps.
 *
 * Version 2 (over version 1): a 128-byte header with incompatible feature
 * bits; absolute positions (head, base) instead of a committed length; an
 * announced reservation end and a fenced hole, so that a takeover never
 * publishes over bytes a paused former owner may still copy; the owner's PID
 * namespace and process start time next to its pid.
 */
#ifndef IVSHMFS_LAYOUT_H
#define IVSHMFS_LAYOUT_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* "IVSHMFS" followed by a zero byte, read as a little-endian uint64. */
#define IVSHMFS_MAGIC UINT64_C(0x0053464d48535649)
#define IVSHMFS_LAYOUT_VERSION 2u

/*
 * Incompatible feature bits (header.features). A peer refuses a region with
 * any bit it does not know (IVSHMFS_FEATURES_KNOWN lists those this code
 * implements). Features become bits here instead of new versions.
 *
 * IVSHMFS_FEATURE_SPLIT: this backend is one piece of a split region (one
 *   backend per partition, so the hypervisor can give each VM write access
 *   to its own piece only). A piece is a complete region holding exactly one
 *   partition; `format_id` is the identity of the whole region, the same in
 *   every piece, so pieces of different regions are never mixed;
 *   `split_pieces` is how many pieces the region was formatted with.
 * IVSHMFS_FEATURE_RING: at least one partition entry has
 *   IVSHMFS_PARTITION_RING: its data area is a ring that keeps the newest
 *   `capacity` bytes (see docs/layout.md, "Ring partitions").
 * IVSHMFS_FEATURE_LIVE_TABLE: the partition table changes at run time
 *   (docs/layout.md, "Live partition table"). partition_count is then the
 *   number of table slots (fixed at format; the table never moves); only
 *   entries with IVSHMFS_PARTITION_LIVE are partitions. Entries change under
 *   the seqlock header.table_seq, by the holder of header.table_lock. In
 *   such a region a ring entry does not need IVSHMFS_FEATURE_RING.
 */
#define IVSHMFS_FEATURE_SPLIT (UINT64_C(1) << 0)
#define IVSHMFS_FEATURE_RING (UINT64_C(1) << 1)
#define IVSHMFS_FEATURE_LIVE_TABLE (UINT64_C(1) << 2)
#define IVSHMFS_FEATURES_KNOWN (IVSHMFS_FEATURE_SPLIT | IVSHMFS_FEATURE_RING | IVSHMFS_FEATURE_LIVE_TABLE)

/* Partition entry flags (partition_entry.flags). */
#define IVSHMFS_PARTITION_RING (UINT32_C(1) << 0)
/* Live tables only: the slot holds a partition (clear: the slot is free). */
#define IVSHMFS_PARTITION_LIVE (UINT32_C(1) << 1)
/* Live tables only: bits 16..31 count the partitions added to this slot, so
 * a partition added where another was removed is told from it. */
#define IVSHMFS_PARTITION_SERIAL_SHIFT 16u
#define IVSHMFS_PARTITION_SERIAL_MASK UINT32_C(0xffff0000)

/* header.table_lock: (milliseconds of CLOCK_REALTIME when taken) << this |
 * random low bits, never zero; 0 = free. A lock older than
 * IVSHMFS_TABLE_LOCK_STALE_MS may be broken (its holder died in a change). */
#define IVSHMFS_TABLE_LOCK_TIME_SHIFT 22u
#define IVSHMFS_TABLE_LOCK_STALE_MS 2000u

/* Bit 63 of control.head: a takeover is fencing the head (see docs/layout.md). */
#define IVSHMFS_HEAD_FENCE (UINT64_C(1) << 63)

#define IVSHMFS_PAGE_SIZE 4096u
#define IVSHMFS_CONTROL_ALIGN 128u
#define IVSHMFS_MAX_PARTITIONS 64u
/* The smallest data area a partition may have. */
#define IVSHMFS_MIN_CAPACITY IVSHMFS_PAGE_SIZE

struct ivshmfs_header {
  uint64_t magic;           /*  0: IVSHMFS_MAGIC; stored last by format */
  uint32_t version;         /*  8: IVSHMFS_LAYOUT_VERSION */
  uint32_t header_size;     /* 12: sizeof(struct ivshmfs_header) */
  uint64_t region_size;     /* 16: bytes of the whole region */
  uint64_t format_id;       /* 24: random, non-zero, new at every format */
  uint64_t format_time_ns;  /* 32: CLOCK_REALTIME of the format */
  uint32_t partition_count; /* 40: 1 .. IVSHMFS_MAX_PARTITIONS */
  uint32_t page_size;       /* 44: alignment of data areas: IVSHMFS_PAGE_SIZE */
  uint64_t control_offset;  /* 48: first control block; IVSHMFS_CONTROL_ALIGN-aligned */
  uint64_t data_offset;     /* 56: first byte after the metadata; page-aligned */
  uint64_t features;        /* 64: incompatible feature bits; see IVSHMFS_FEATURES_KNOWN */
  uint32_t split_pieces;    /* 72: IVSHMFS_FEATURE_SPLIT: pieces at format; else zero */
  uint32_t reserved32;      /* 76: zero */
  uint64_t table_seq;       /* 80: live tables: seqlock, odd while an entry changes, +2 per change; else zero */
  uint64_t table_lock;      /* 88: live tables: the changer's lock word (IVSHMFS_TABLE_LOCK_*); else zero */
  uint64_t reserved[4];     /* 96: zero */
};

struct ivshmfs_partition_entry {
  uint32_t id;             /*  0: peer id; unique, < IVSHMFS_MAX_PARTITIONS */
  uint32_t flags;          /*  4: IVSHMFS_PARTITION_* bits; zero for a log partition */
  uint64_t control_offset; /*  8: this partition's struct ivshmfs_control */
  uint64_t data_offset;    /* 16: page-aligned, >= header.data_offset */
  uint64_t capacity;       /* 24: bytes; page multiple, >= IVSHMFS_MIN_CAPACITY */
};

/*
 * One control block per partition, 128 bytes: the first cache line holds
 * what the writer changes on every append (and readers poll), the second the
 * owner's claim and heartbeat, so heartbeats never disturb the data path.
 */
struct ivshmfs_control {
  /* cache line 0: the data path (positions are absolute byte counts) */
  uint64_t head;          /*  0: end of what is published; only grows; bit 63: fence under way */
  uint64_t generation;    /*  8: seqlock: odd while a reset is under way; +2 per reset */
  uint64_t last_write_ns; /* 16: CLOCK_REALTIME of the last commit or reset */
  uint64_t base;          /* 24: absolute position of data[0] in this generation */
  uint64_t reserve_end;   /* 32: no owner copies at or past this absolute position; only grows */
  uint64_t hole_offset;   /* 40: data-area offset of the fenced hole (if hole_length != 0) */
  uint64_t hole_length;   /* 48: bytes of the hole: never shown, never published over */
  uint64_t reserved0;     /* 56: zero; a split piece's write probe sets it briefly (docs/layout.md) */
  /* cache line 1: ownership */
  uint64_t owner_token;        /* 64: 0 = unclaimed; else a random claim token */
  uint64_t owner_heartbeat_ns; /* 72: CLOCK_REALTIME, refreshed by the live owner */
  uint64_t owner_since_ns;     /* 80: CLOCK_REALTIME of the claim */
  uint64_t owner_pid;          /* 88: process id of the owner, in its own system */
  uint64_t owner_host;         /* 96: hash of the owner system's boot id */
  uint64_t owner_pid_ns;       /* 104: inode of the owner's /proc/self/ns/pid; 0: unknown */
  uint64_t owner_start_time;   /* 112: field 22 of the owner's /proc/self/stat; 0: unknown */
  uint64_t waiting_for;        /* 120: doorbells: bit i = this owner waits for commits to partition id i */
};

#ifdef __cplusplus
} /* extern "C" */
#endif

/* The layout is part of the on-memory format: a change here is a new version. */
#ifdef __cplusplus
#include <cstddef>
#define IVSHMFS_LAYOUT_ASSERT(expr, msg) static_assert(expr, msg)
#else
#include <stddef.h>
#define IVSHMFS_LAYOUT_ASSERT(expr, msg) _Static_assert(expr, msg)
#endif

IVSHMFS_LAYOUT_ASSERT(sizeof(struct ivshmfs_header) == 128, "header is 128 bytes");
IVSHMFS_LAYOUT_ASSERT(offsetof(struct ivshmfs_header, version) == 8, "version");
IVSHMFS_LAYOUT_ASSERT(offsetof(struct ivshmfs_header, header_size) == 12, "header_size");
IVSHMFS_LAYOUT_ASSERT(offsetof(struct ivshmfs_header, region_size) == 16, "region_size");
IVSHMFS_LAYOUT_ASSERT(offsetof(struct ivshmfs_header, format_id) == 24, "format_id");
IVSHMFS_LAYOUT_ASSERT(offsetof(struct ivshmfs_header, format_time_ns) == 32, "format_time_ns");
IVSHMFS_LAYOUT_ASSERT(offsetof(struct ivshmfs_header, partition_count) == 40, "partition_count");
IVSHMFS_LAYOUT_ASSERT(offsetof(struct ivshmfs_header, page_size) == 44, "page_size");
IVSHMFS_LAYOUT_ASSERT(offsetof(struct ivshmfs_header, control_offset) == 48, "control_offset");
IVSHMFS_LAYOUT_ASSERT(offsetof(struct ivshmfs_header, data_offset) == 56, "data_offset");
IVSHMFS_LAYOUT_ASSERT(offsetof(struct ivshmfs_header, features) == 64, "features");
IVSHMFS_LAYOUT_ASSERT(offsetof(struct ivshmfs_header, split_pieces) == 72, "split_pieces");
IVSHMFS_LAYOUT_ASSERT(offsetof(struct ivshmfs_header, table_seq) == 80, "table_seq");
IVSHMFS_LAYOUT_ASSERT(offsetof(struct ivshmfs_header, table_lock) == 88, "table_lock");
IVSHMFS_LAYOUT_ASSERT(offsetof(struct ivshmfs_header, reserved) == 96, "reserved");

IVSHMFS_LAYOUT_ASSERT(sizeof(struct ivshmfs_partition_entry) == 32, "entry is 32 bytes");
IVSHMFS_LAYOUT_ASSERT(offsetof(struct ivshmfs_partition_entry, flags) == 4, "flags");
IVSHMFS_LAYOUT_ASSERT(offsetof(struct ivshmfs_partition_entry, control_offset) == 8, "control");
IVSHMFS_LAYOUT_ASSERT(offsetof(struct ivshmfs_partition_entry, data_offset) == 16, "data");
IVSHMFS_LAYOUT_ASSERT(offsetof(struct ivshmfs_partition_entry, capacity) == 24, "capacity");

IVSHMFS_LAYOUT_ASSERT(sizeof(struct ivshmfs_control) == 128, "control block is 128 bytes");
IVSHMFS_LAYOUT_ASSERT(offsetof(struct ivshmfs_control, head) == 0, "head");
IVSHMFS_LAYOUT_ASSERT(offsetof(struct ivshmfs_control, generation) == 8, "generation");
IVSHMFS_LAYOUT_ASSERT(offsetof(struct ivshmfs_control, last_write_ns) == 16, "last_write_ns");
IVSHMFS_LAYOUT_ASSERT(offsetof(struct ivshmfs_control, base) == 24, "base");
IVSHMFS_LAYOUT_ASSERT(offsetof(struct ivshmfs_control, reserve_end) == 32, "reserve_end");
IVSHMFS_LAYOUT_ASSERT(offsetof(struct ivshmfs_control, hole_offset) == 40, "hole_offset");
IVSHMFS_LAYOUT_ASSERT(offsetof(struct ivshmfs_control, hole_length) == 48, "hole_length");
IVSHMFS_LAYOUT_ASSERT(offsetof(struct ivshmfs_control, owner_token) == 64, "owner on line 1");
IVSHMFS_LAYOUT_ASSERT(offsetof(struct ivshmfs_control, owner_heartbeat_ns) == 72, "heartbeat");
IVSHMFS_LAYOUT_ASSERT(offsetof(struct ivshmfs_control, owner_since_ns) == 80, "since");
IVSHMFS_LAYOUT_ASSERT(offsetof(struct ivshmfs_control, owner_pid) == 88, "pid");
IVSHMFS_LAYOUT_ASSERT(offsetof(struct ivshmfs_control, owner_host) == 96, "host");
IVSHMFS_LAYOUT_ASSERT(offsetof(struct ivshmfs_control, owner_pid_ns) == 104, "pid namespace");
IVSHMFS_LAYOUT_ASSERT(offsetof(struct ivshmfs_control, owner_start_time) == 112, "start time");
IVSHMFS_LAYOUT_ASSERT(offsetof(struct ivshmfs_control, waiting_for) == 120, "waiting_for");

#endif /* IVSHMFS_LAYOUT_H */
