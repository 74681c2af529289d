// Result<T>: the return type of every setup call in libshmbus.
//
// A Result holds either a value or an Error (an Errc plus a message that names the thing and the fix).
// It never throws; reading the value of an error Result aborts with the error's code and message (so
// `connect().value()` in a quick program says why it failed), and reading the error of a value Result
// aborts with file:line: both are broken invariants in the caller. The hot path does not use Result: it
// returns [[nodiscard]] status enums instead, so that it never builds a message string.
#pragma once

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>

namespace shmbus {

// Aborts the process with file:line and a message. For broken invariants only, never for bad input.
[[noreturn]] void panic(const char* file, int line, const char* what) noexcept;

#define SHMBUS_ASSERT(cond)                                                       \
  do {                                                                            \
    if (__builtin_expect(!(cond), 0)) ::shmbus::panic(__FILE__, __LINE__, #cond); \
  } while (0)

enum class Errc {
  ok = 0,
  invalid_argument,   // the caller passed something malformed (a name, a size, a flag)
  not_found,          // no such segment, topic or entry
  already_exists,     // create with O_EXCL found one
  permission_denied,  // the file mode or ACL does not grant it
  foreign_segment,    // the bytes are not a shmbus segment (bad magic)
  version_mismatch,   // a shmbus segment of another layout version or ABI
  truncated,          // the file is smaller than the header says, or than a header
  incomplete,         // the creator has not finished (or died while) creating it
  no_space,           // the arena or the device has no room left
  too_large,          // a message larger than the topic's max size, a frame larger than the limit
  timed_out,          // a deadline passed
  closed,             // the client, port or connection is closed
  unavailable,        // no broker runs for the domain (and autostart is off or failed)
  protocol_error,     // a malformed or unexpected control message
  system_error,       // any other errno
};

// A short, stable name for an Errc ("foreign_segment"), for logs and tests.
const char* errc_name(Errc e) noexcept;
// The inverse of errc_name(); system_error for an unknown name.
Errc errc_from_name(std::string_view name) noexcept;

// One place maps errno to Errc (STYLE.md: "One place maps errno to Errc").
Errc errc_from_errno(int err) noexcept;

class Error {
 public:
  Error(Errc code, std::string message) : code_(code), message_(std::move(message)) {}
  // An Error from the current errno: "<what>: <strerror(errno)>".
  static Error from_errno(int err, const std::string& what);

  Errc code() const noexcept { return code_; }
  const std::string& message() const noexcept { return message_; }

 private:
  Errc code_;
  std::string message_;
};

namespace detail {
// value() on an error Result: print the error and abort.
[[noreturn]] void bad_value_access(const Error& e) noexcept;
}  // namespace detail

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::in_place_index<0>, std::move(value)) {}      // NOLINT: implicit by design
  Result(Error error) : v_(std::in_place_index<1>, std::move(error)) {}  // NOLINT

  bool has_value() const noexcept { return v_.index() == 0; }
  explicit operator bool() const noexcept { return has_value(); }

  T& value() & {
    if (__builtin_expect(!has_value(), 0)) detail::bad_value_access(std::get<1>(v_));
    return std::get<0>(v_);
  }
  T&& value() && {
    if (__builtin_expect(!has_value(), 0)) detail::bad_value_access(std::get<1>(v_));
    return std::get<0>(std::move(v_));
  }
  T* operator->() { return &value(); }
  T& operator*() & { return value(); }

  const Error& error() const {
    SHMBUS_ASSERT(!has_value());
    return std::get<1>(v_);
  }

 private:
  std::variant<T, Error> v_;
};

// Result<void>: success or an Error.
template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error error) : error_(std::move(error)), ok_(false) {}  // NOLINT
  bool has_value() const noexcept { return ok_; }
  explicit operator bool() const noexcept { return ok_; }
  const Error& error() const {
    SHMBUS_ASSERT(!ok_);
    return error_;
  }

 private:
  Error error_{Errc::ok, {}};
  bool ok_ = true;
};

using Status = Result<void>;

}  // namespace shmbus
