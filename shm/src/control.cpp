#include "shmbus/detail/control.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>

#include "shmbus/paths.hpp"

namespace shmbus::control {
namespace {

// Read exactly n bytes before the deadline.
Status read_full(int fd, void* buf, std::size_t n, std::chrono::steady_clock::time_point deadline) {
  auto* p = static_cast<char*>(buf);
  while (n > 0) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return Error(Errc::timed_out, "no reply from the broker in time");
    pollfd pf{fd, POLLIN, 0};
    const int pr = ::poll(&pf, 1, static_cast<int>(left.count()));
    if (pr < 0) {
      if (errno == EINTR) continue;
      return Error::from_errno(errno, "poll on the control socket");
    }
    if (pr == 0) continue;
    const ssize_t k = ::recv(fd, p, n, 0);
    if (k == 0) return Error(Errc::closed, "the control connection was closed");
    if (k < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      if (errno == ECONNRESET) return Error(Errc::closed, "the control connection was reset");
      return Error::from_errno(errno, "recv on the control socket");
    }
    p += k;
    n -= static_cast<std::size_t>(k);
  }
  return {};
}

}  // namespace

Result<std::string> socket_path(std::string_view domain) {
  auto d = domain_dir(domain);
  if (!d) return d.error();
  return *d + "/broker.sock";
}

Result<int> connect_socket(const std::string& path) {
  sockaddr_un addr{};
  if (path.size() >= sizeof addr.sun_path)
    return Error(Errc::invalid_argument, "socket path \"" + path + "\" is too long for a Unix socket");
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Error::from_errno(errno, "socket");
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    const int err = errno;
    ::close(fd);
    if (err == ENOENT || err == ECONNREFUSED) return Error(Errc::unavailable, "no broker listens on " + path);
    return Error::from_errno(err, "connect to " + path);
  }
  return fd;
}

Status send_frame(int fd, const nlohmann::json& message) {
  const std::string body = message.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (body.size() > kMaxFrame)
    return Error(Errc::too_large, "control message of " + std::to_string(body.size()) + " bytes exceeds " +
                                      std::to_string(kMaxFrame));
  std::string frame(4 + body.size(), '\0');
  const auto n = static_cast<std::uint32_t>(body.size());
  frame[0] = static_cast<char>(n & 0xff);
  frame[1] = static_cast<char>((n >> 8) & 0xff);
  frame[2] = static_cast<char>((n >> 16) & 0xff);
  frame[3] = static_cast<char>((n >> 24) & 0xff);
  std::memcpy(frame.data() + 4, body.data(), body.size());
  std::size_t off = 0;
  while (off < frame.size()) {
    const ssize_t k = ::send(fd, frame.data() + off, frame.size() - off, MSG_NOSIGNAL);
    if (k < 0) {
      if (errno == EINTR) continue;
      if (errno == EPIPE || errno == ECONNRESET)
        return Error(Errc::closed, "the control connection was closed");
      return Error::from_errno(errno, "send on the control socket");
    }
    off += static_cast<std::size_t>(k);
  }
  return {};
}

Result<nlohmann::json> recv_frame(int fd, std::chrono::milliseconds timeout, std::size_t max) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  unsigned char len[4];
  if (auto st = read_full(fd, len, 4, deadline); !st) return st.error();
  const std::uint32_t n =
      len[0] | (len[1] << 8) | (len[2] << 16) | (static_cast<std::uint32_t>(len[3]) << 24);
  if (n > max)
    return Error(Errc::too_large,
                 "control frame of " + std::to_string(n) + " bytes exceeds " + std::to_string(max));
  std::string body(n, '\0');
  if (auto st = read_full(fd, body.data(), n, deadline); !st) return st.error();
  auto j = nlohmann::json::parse(body, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    return Error(Errc::protocol_error, "control frame is not a JSON object");
  return j;
}

std::uint64_t next_request_id() noexcept {
  static std::atomic<std::uint64_t> next{1};
  return next.fetch_add(1, std::memory_order_relaxed);  // relaxed: only uniqueness and increase matter
}

Result<nlohmann::json> call(int fd, const nlohmann::json& request, std::chrono::milliseconds timeout) {
  std::uint64_t id = 0;
  const nlohmann::json* to_send = &request;
  nlohmann::json with_id;
  if (auto it = request.find("req_id"); it != request.end() && it->is_number_unsigned()) {
    id = it->get<std::uint64_t>();
  } else {
    id = next_request_id();
    with_id = request;
    with_id["req_id"] = id;
    to_send = &with_id;
  }
  if (auto st = send_frame(fd, *to_send); !st) {
    // The broker may have refused the connection (too many clients, a pid namespace it cannot see) and
    // closed it before our first frame went out: its reason is still in our receive buffer.
    if (st.error().code() == Errc::closed)
      if (auto why = recv_frame(fd, std::chrono::milliseconds(100));
          why && why->value("ok", true) == false && why->contains("error"))
        return Error(errc_from_name(why->value("code", std::string("system_error"))),
                     why->value("error", std::string("broker error")));
    return st.error();
  }
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  Result<nlohmann::json> reply = Error(Errc::timed_out, "no reply from the broker in time");
  for (;;) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    reply = recv_frame(fd, std::max(left, std::chrono::milliseconds(0)));
    if (!reply) return reply.error();
    auto rid = reply->find("req_id");
    if (rid == reply->end() || !rid->is_number_unsigned()) {
      // A refusal the broker sends before it reads any request (too many clients) carries no id.
      if (reply->value("ok", true) == false) break;
      return Error(Errc::protocol_error, "broker reply without \"req_id\"");
    }
    const std::uint64_t got = rid->get<std::uint64_t>();
    if (got == id) break;
    if (got > id)
      return Error(Errc::protocol_error, "broker answered request " + std::to_string(got) +
                                             " while request " + std::to_string(id) + " waits");
    // got < id: the answer to a request that timed out earlier on this connection. Drop it.
  }
  const auto& r = *reply;
  if (!r.contains("ok") || !r["ok"].is_boolean())
    return Error(Errc::protocol_error, "broker reply without \"ok\"");
  if (!r["ok"].get<bool>())
    return Error(errc_from_name(r.value("code", std::string("system_error"))),
                 r.value("error", std::string("broker error")));
  return reply;
}

nlohmann::json error_reply(const Error& e) {
  return {{"ok", false}, {"code", errc_name(e.code())}, {"error", e.message()}};
}

}  // namespace shmbus::control
