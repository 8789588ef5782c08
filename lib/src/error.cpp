// SPDX-License-Identifier: MIT
#include "ivshmfs/error.hpp"

#include <cerrno>
#include <cstring>

namespace ivshmfs {

const char* to_string(Errc code) noexcept {
  switch (code) {
    case Errc::io_error: return "io_error";
    case Errc::invalid_argument: return "invalid_argument";
    case Errc::not_formatted: return "not_formatted";
    case Errc::bad_magic: return "bad_magic";
    case Errc::unsupported_version: return "unsupported_version";
    case Errc::region_too_small: return "region_too_small";
    case Errc::size_mismatch: return "size_mismatch";
    case Errc::corrupt_header: return "corrupt_header";
    case Errc::corrupt_partition_table: return "corrupt_partition_table";
    case Errc::no_such_partition: return "no_such_partition";
    case Errc::claimed: return "claimed";
    case Errc::not_owner: return "not_owner";
    case Errc::no_space: return "no_space";
    case Errc::busy: return "busy";
    case Errc::reformatted: return "reformatted";
    case Errc::read_only: return "read_only";
    case Errc::already_formatted: return "already_formatted";
    case Errc::overrun: return "overrun";
    case Errc::too_big: return "too_big";
  }
  return "unknown";
}

int to_errno(Errc code) noexcept {
  switch (code) {
    case Errc::io_error: return EIO;
    case Errc::invalid_argument: return EINVAL;
    case Errc::not_formatted:
    case Errc::bad_magic:
    case Errc::unsupported_version:
    case Errc::region_too_small:
    case Errc::size_mismatch:
    case Errc::corrupt_header:
    case Errc::corrupt_partition_table: return EUCLEAN;
    case Errc::no_such_partition: return ENOENT;
    case Errc::claimed: return EBUSY;
    case Errc::not_owner: return EACCES;
    case Errc::no_space: return ENOSPC;
    case Errc::busy: return EAGAIN;
    case Errc::reformatted: return ESTALE;
    case Errc::read_only: return EROFS;
    case Errc::already_formatted: return EEXIST;
    case Errc::overrun: return EPIPE;
    case Errc::too_big: return EFBIG;
  }
  return EIO;
}

Error make_error(Errc code, std::string message) { return Error{code, std::move(message), 0}; }

Error make_sys_error(const std::string& what) {
  const int err = errno;
  return Error{Errc::io_error, what + ": " + std::strerror(err), err};
}

}  // namespace ivshmfs
