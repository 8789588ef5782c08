// SPDX-License-Identifier: MIT
#include "ivshmfs/identity.hpp"

#include <unistd.h>

#include <array>
#include <cctype>
#include <charconv>
#include <cinttypes>
#include <cstdio>

#include "ivshmfs/layout.h"

namespace ivshmfs {
namespace {

// Parses the decimal digits at the front of `text`; nullopt if there are none
// or the number does not fit a partition id.
std::optional<uint32_t> leading_number(std::string_view text, std::size_t* used) {
  std::size_t n = 0;
  while (n < text.size() && std::isdigit(static_cast<unsigned char>(text[n])) != 0) ++n;
  if (n == 0 || n > 9) return std::nullopt;
  uint32_t value = 0;
  std::from_chars(text.data(), text.data() + n, value);
  *used = n;
  return value;
}

}  // namespace

std::optional<uint32_t> peer_id_from_hostname(std::string_view hostname) noexcept {
  std::size_t used = 0;
  if (hostname.size() > 2 && (hostname.substr(0, 2) == "vm" || hostname.substr(0, 2) == "VM")) {
    auto rest = hostname.substr(2);
    auto id = leading_number(rest, &used);
    // "vm1" or "vm1-web" / "vm1.example" / "vm1_x": the number must end the name or a label.
    if (id && (used == rest.size() || rest[used] == '-' || rest[used] == '.' || rest[used] == '_')) {
      return id;
    }
    return std::nullopt;
  }
  // The 2016 report's form: "<id>_<anything>".
  auto id = leading_number(hostname, &used);
  if (id && used < hostname.size() && hostname[used] == '_') return id;
  return std::nullopt;
}

Result<PeerIdentity> resolve_peer_id(std::optional<uint32_t> explicit_id, const Backend* backend) {
  if (explicit_id) return PeerIdentity{*explicit_id, "option"};
  if (backend != nullptr && backend->device_info() && backend->device_info()->has_msix) {
    // IVPosition is only meaningful on ivshmem-doorbell; it reads 0 on ivshmem-plain.
    return PeerIdentity{backend->device_info()->ivposition, "IVPosition register"};
  }
  std::array<char, 256> name{};
  if (gethostname(name.data(), name.size() - 1) != 0) return make_sys_error("gethostname");
  std::string_view host(name.data());
  if (auto id = peer_id_from_hostname(host)) {
    return PeerIdentity{*id, "hostname '" + std::string(host) + "'"};
  }
  return make_error(Errc::invalid_argument, "cannot tell this peer's id: hostname '" + std::string(host) +
                                                "' is not of the form vmN, vmN-name or N_name; pass the id explicitly");
}

Result<uint64_t> parse_size(std::string_view text) {
  auto bad = [&] {
    return make_error(Errc::invalid_argument, "invalid size '" + std::string(text) +
                                                  "': expected a number with an optional K, M, G or T suffix");
  };
  uint64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc{} || end == text.data()) return bad();
  std::string_view suffix(end, static_cast<std::size_t>(text.data() + text.size() - end));
  unsigned shift = 0;
  if (!suffix.empty()) {
    switch (std::toupper(static_cast<unsigned char>(suffix.front()))) {
      case 'K': shift = 10; break;
      case 'M': shift = 20; break;
      case 'G': shift = 30; break;
      case 'T': shift = 40; break;
      case 'B':
        if (suffix.size() == 1) break;
        return bad();
      default: return bad();
    }
    if (shift != 0) {
      suffix.remove_prefix(1);
      if (!(suffix.empty() || suffix == "B" || suffix == "iB" || suffix == "ib" || suffix == "b")) return bad();
    }
  }
  if (shift != 0 && value > (UINT64_MAX >> shift)) {
    return make_error(Errc::invalid_argument, "size '" + std::string(text) + "' is too large");
  }
  return value << shift;
}

std::string format_size(uint64_t bytes) {
  static constexpr std::array<const char*, 5> units{"B", "KiB", "MiB", "GiB", "TiB"};
  std::size_t unit = 0;
  uint64_t whole = bytes;
  while (unit + 1 < units.size() && whole >= 1024 && whole % 1024 == 0) {
    whole /= 1024;
    ++unit;
  }
  char out[64];
  std::snprintf(out, sizeof out, "%" PRIu64 " %s", whole, units[unit]);
  return out;
}

}  // namespace ivshmfs
