// SPDX-License-Identifier: MIT
// Which peer are we? An explicit id, else the doorbell's IVPosition, else the
// hostname (vm1, vm1-web, or the 2016 report's 1_... form).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "ivshmfs/backend.hpp"
#include "ivshmfs/error.hpp"

namespace ivshmfs {

// "vm1" -> 1, "vm12-web" -> 12, "1_alpha" -> 1; nullopt for anything else.
std::optional<uint32_t> peer_id_from_hostname(std::string_view hostname) noexcept;

struct PeerIdentity {
  uint32_t id = 0;
  std::string source;  // "option", "IVPosition register", "hostname 'vm1'"
};

// Resolves this peer's id in the documented order. `backend` may be null.
Result<PeerIdentity> resolve_peer_id(std::optional<uint32_t> explicit_id, const Backend* backend);

// "64M" -> 67108864; K, M, G, T suffixes (powers of 1024), optional "iB"/"B".
Result<uint64_t> parse_size(std::string_view text);
// 67108864 -> "64 MiB"
std::string format_size(uint64_t bytes);

}  // namespace ivshmfs
