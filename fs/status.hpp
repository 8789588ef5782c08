// SPDX-License-Identifier: MIT
// The facts the daemon publishes about the region: the .status file (one
// record per line, key=value fields, for grep and awk) and the read-only
// extended attributes of each partition file.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "ivshmfs/region.hpp"

namespace ivshmfs::fs {

// The name of partition `id`'s file: "vm<id>".
std::string partition_file_name(uint32_t id);

// The whole .status text. `stale` once the region was formatted anew; no
// `self_id` on a read-only peer (self=none). `wakeups`: the change source's
// line (ChangeSource::status), the last line.
std::string format_status(const Region& region, std::optional<uint32_t> self_id, bool stale,
                          const std::string& wakeups = {});

// Prefix of every extended attribute of a partition file.
inline constexpr const char* kXattrPrefix = "user.ivshmfs.";

// (name, value) of every extended attribute of a partition file, in the order
// listxattr gives them. Values are decimal text without a newline.
// `skipped`: the bytes readers of this mount skipped silently (rings, -o overrun=skip).
std::vector<std::pair<std::string, std::string>> partition_xattrs(const PartitionStat& stat, bool self,
                                                                  uint64_t skipped);

}  // namespace ivshmfs::fs
