#include "shmbus/paths.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>

namespace shmbus {
namespace {

bool token_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
}

std::string quoted(std::string_view s) {
  return "\"" + std::string(s) + "\"";
}

// mkdir -p for one level below an existing parent; ok if it exists and is a directory we can write.
bool ensure_dir(const std::string& path, mode_t mode) {
  if (::mkdir(path.c_str(), mode) == 0) {
    ::chmod(path.c_str(), mode);  // exact mode, whatever the umask
    return true;
  }
  struct stat st {};
  // An existing directory needs search permission only: clients just connect to the socket in it (a
  // group member of a shared domain may have r-x); the broker's own file creation reports its errors.
  return errno == EEXIST && ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode) &&
         ::access(path.c_str(), X_OK) == 0;
}

}  // namespace

Status check_domain_name(std::string_view d) {
  if (d.empty()) return Error(Errc::invalid_argument, "domain name is empty");
  if (d.size() > kMaxDomainLen)
    return Error(Errc::invalid_argument, "domain name " + quoted(d) + " is " + std::to_string(d.size()) +
                                             " bytes; the limit is " + std::to_string(kMaxDomainLen));
  for (std::size_t i = 0; i < d.size(); ++i)
    if (!token_char(d[i]))
      return Error(Errc::invalid_argument, "domain name " + quoted(d) + ": character '" +
                                               std::string(1, d[i]) + "' at offset " + std::to_string(i) +
                                               " is not one of [A-Za-z0-9_-]");
  return {};
}

Status check_topic_name(std::string_view n) {
  if (n.empty()) return Error(Errc::invalid_argument, "topic name is empty");
  if (n.size() > kMaxTopicNameLen)
    return Error(Errc::invalid_argument, "topic name is " + std::to_string(n.size()) +
                                             " bytes; the limit is " + std::to_string(kMaxTopicNameLen));
  std::size_t token_start = 0;
  for (std::size_t i = 0; i <= n.size(); ++i) {
    if (i == n.size() || n[i] == '.') {
      if (i == token_start)
        return Error(Errc::invalid_argument,
                     "topic " + quoted(n) + ": empty token at offset " + std::to_string(i));
      token_start = i + 1;
      continue;
    }
    const char c = n[i];
    if (c == '*' || c == '>')
      return Error(Errc::invalid_argument, "topic " + quoted(n) + ": wildcard '" + std::string(1, c) +
                                               "' at offset " + std::to_string(i) +
                                               " (wildcards select topics; they are not names)");
    if (!token_char(c)) {
      char buf[64];
      std::snprintf(buf, sizeof buf, "byte 0x%02x", static_cast<unsigned char>(c));
      return Error(Errc::invalid_argument,
                   "topic " + quoted(n) + ": " +
                       (c >= 0x20 && c < 0x7f ? "character '" + std::string(1, c) + "'" : std::string(buf)) +
                       " at offset " + std::to_string(i) + " is not one of [A-Za-z0-9_-] or '.'");
    }
  }
  return {};
}

std::string default_domain() {
  const char* d = std::getenv("SHMBUS_DOMAIN");
  return d != nullptr && *d != '\0' ? d : "default";
}

Result<std::string> runtime_dir() {
  if (const char* e = std::getenv("SHMBUS_RUNTIME_DIR"); e != nullptr && *e != '\0') {
    if (!ensure_dir(e, 0700))
      return Error::from_errno(errno, "SHMBUS_RUNTIME_DIR " + quoted(e) + " is not usable");
    return std::string(e);
  }
  if (::access("/run", W_OK) == 0 && ensure_dir("/run/shmbus", 0755)) return std::string("/run/shmbus");
  if (const char* x = std::getenv("XDG_RUNTIME_DIR"); x != nullptr && *x != '\0') {
    std::string p = std::string(x) + "/shmbus";
    if (ensure_dir(p, 0700)) return p;
  }
  std::string p = "/tmp/shmbus-" + std::to_string(::getuid());
  if (!ensure_dir(p, 0700)) return Error::from_errno(errno, "cannot make runtime directory " + quoted(p));
  return p;
}

Result<std::string> domain_dir(std::string_view domain) {
  if (auto ok = check_domain_name(domain); !ok) return ok.error();
  auto rt = runtime_dir();
  if (!rt) return rt.error();
  std::string p = *rt + "/" + std::string(domain);
  if (!ensure_dir(p, 0700)) return Error::from_errno(errno, "cannot make domain directory " + quoted(p));
  return p;
}

std::string directory_segment_name(std::string_view domain) {
  return std::string(domain) + ".dir";
}

std::string topic_segment_name(std::string_view domain, std::uint64_t id) {
  return std::string(domain) + "." + std::to_string(id);
}

}  // namespace shmbus
