#include "shmbus/result.hpp"

#include <cstring>

namespace shmbus {

void panic(const char* file, int line, const char* what) noexcept {
  std::fprintf(stderr, "shmbus: invariant broken at %s:%d: %s\n", file, line, what);
  std::abort();
}

void detail::bad_value_access(const Error& e) noexcept {
  std::fprintf(stderr, "shmbus: value() called on a Result that holds an error: %s: %s\n",
               errc_name(e.code()), e.message().c_str());
  std::abort();
}

const char* errc_name(Errc e) noexcept {
  switch (e) {
    case Errc::ok:
      return "ok";
    case Errc::invalid_argument:
      return "invalid_argument";
    case Errc::not_found:
      return "not_found";
    case Errc::already_exists:
      return "already_exists";
    case Errc::permission_denied:
      return "permission_denied";
    case Errc::foreign_segment:
      return "foreign_segment";
    case Errc::version_mismatch:
      return "version_mismatch";
    case Errc::truncated:
      return "truncated";
    case Errc::incomplete:
      return "incomplete";
    case Errc::no_space:
      return "no_space";
    case Errc::too_large:
      return "too_large";
    case Errc::timed_out:
      return "timed_out";
    case Errc::closed:
      return "closed";
    case Errc::unavailable:
      return "unavailable";
    case Errc::protocol_error:
      return "protocol_error";
    case Errc::system_error:
      return "system_error";
  }
  return "unknown";
}

Errc errc_from_name(std::string_view name) noexcept {
  for (int i = 0; i <= static_cast<int>(Errc::system_error); ++i)
    if (name == errc_name(static_cast<Errc>(i))) return static_cast<Errc>(i);
  return Errc::system_error;
}

Errc errc_from_errno(int err) noexcept {
  switch (err) {
    case 0:
      return Errc::ok;
    case ENOENT:
      return Errc::not_found;
    case EEXIST:
      return Errc::already_exists;
    case EACCES:
    case EPERM:
      return Errc::permission_denied;
    case ENOSPC:
    case ENOMEM:
    case EFBIG:
      return Errc::no_space;
    case EINVAL:
    case ENAMETOOLONG:
      return Errc::invalid_argument;
    case ETIMEDOUT:
      return Errc::timed_out;
    case ECONNREFUSED:
    case ECONNRESET:
    case EPIPE:
      return Errc::unavailable;
    default:
      return Errc::system_error;
  }
}

Error Error::from_errno(int err, const std::string& what) {
  return Error(errc_from_errno(err), what + ": " + std::strerror(err));
}

}  // namespace shmbus
