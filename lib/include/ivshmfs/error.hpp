// SPDX-License-Identifier: MIT
// Errors of the ivshmfs library: a small enum with a message, returned by value.
// Fallible operations return Result<T>; nothing in the library throws across
// its API, so the C API and the FUSE daemon turn errors into errno in one place.
#pragma once

#include <cassert>
#include <string>
#include <utility>
#include <variant>

namespace ivshmfs {

enum class Errc : int {
  io_error = 1,             // a system call failed; Error::sys_errno says which
  invalid_argument,         // a caller passed something out of range
  not_formatted,            // the region holds no ivshmfs header (magic is zero)
  bad_magic,                // the first 8 bytes are not IVSHMFS_MAGIC
  unsupported_version,      // a layout version this build does not read
  region_too_small,         // the mapping cannot hold the layout
  size_mismatch,            // header.region_size differs from the mapping's size
  corrupt_header,           // a header field is out of range
  corrupt_partition_table,  // a partition entry is out of range or overlaps
  no_such_partition,        // no partition has the requested id
  claimed,                  // a live owner holds the partition
  not_owner,                // this writer's claim was taken over
  no_space,                 // the partition is full
  busy,                     // no consistent snapshot: a reset kept racing the read
  reformatted,              // the region was formatted anew underneath us
  read_only,                // the backend is mapped read-only
  already_formatted,        // format refused: the region holds a valid header
  overrun,                  // a ring's writer overwrote the bytes asked for (EPIPE)
  too_big,                  // an append larger than a ring's capacity (EFBIG)
};

// Stable lower-case name of an error code, e.g. "bad_magic".
const char* to_string(Errc code) noexcept;
// The errno that best describes an error code (for FUSE and the C API).
int to_errno(Errc code) noexcept;

struct Error {
  Errc code;
  std::string message;  // says what is wrong and where (file, field, value)
  int sys_errno = 0;    // set for Errc::io_error

  // Negative errno, the convention at the C and FUSE boundaries.
  [[nodiscard]] int negative_errno() const noexcept {
    return code == Errc::io_error && sys_errno != 0 ? -sys_errno : -to_errno(code);
  }
};

Error make_error(Errc code, std::string message);
// An io_error from the current errno: "<what>: <strerror(errno)>".
Error make_sys_error(const std::string& what);

template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : state_(std::move(value)) {}      // NOLINT: implicit by design
  Result(Error error) : state_(std::move(error)) {}  // NOLINT: implicit by design
  [[nodiscard]] bool ok() const noexcept { return state_.index() == 0; }
  explicit operator bool() const noexcept { return ok(); }
  T& value() & {
    assert(ok());
    return std::get<0>(state_);
  }
  const T& value() const& {
    assert(ok());
    return std::get<0>(state_);
  }
  T&& value() && {
    assert(ok());
    return std::get<0>(std::move(state_));
  }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  const Error& error() const& {
    assert(!ok());
    return std::get<1>(state_);
  }
  Error&& error() && {
    assert(!ok());
    return std::get<1>(std::move(state_));
  }

 private:
  std::variant<T, Error> state_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error error) : error_(std::move(error)), ok_(false) {}  // NOLINT
  [[nodiscard]] bool ok() const noexcept { return ok_; }
  explicit operator bool() const noexcept { return ok_; }
  const Error& error() const& {
    assert(!ok_);
    return error_;
  }
  Error&& error() && {
    assert(!ok_);
    return std::move(error_);
  }

 private:
  Error error_{Errc::io_error, {}, 0};
  bool ok_ = true;
};

}  // namespace ivshmfs
