// The user-facing API (shmbus.hpp): the control connection with its reconnect thread, and the ports.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <map>
#include <mutex>
#include <thread>

#include "shmbus/detail/control.hpp"
#include "shmbus/owner.hpp"
#include "shmbus/shmbus.hpp"

namespace shmbus {
namespace detail {

using namespace std::chrono_literals;

std::string qname(std::string_view s) {
  return "\"" + std::string(s) + "\"";
}

enum class PortKind : std::uint8_t { publisher, subscriber, producer, consumer };
inline constexpr std::uint32_t kNoSlot = 0xffffffffu;

struct ClientCore {
  std::string domain;
  std::string name;
  bool autostart = true;
  std::chrono::milliseconds connect_timeout{5000};
  std::chrono::milliseconds request_timeout{10000};
  std::string socket;
  // What this process stamps on shared memory: its OwnerId as the broker sees it (hello's "identity").
  // Fixed at the first hello; a later broker that names this process otherwise is refused.
  OwnerId identity{};

  mutable std::mutex mu;  // guards fd, topics, ports, pending_releases
  int fd = -1;
  std::atomic<bool> connected{false};
  std::atomic<bool> stopping{false};
  std::thread monitor;
  std::map<std::uint64_t, std::weak_ptr<TopicHandle>> topics;
  std::vector<std::weak_ptr<PortState>> ports;  // publishers and subscribers: re-registered on reconnect
  // Unsubscribes and unpublishes that could not be sent (no broker at the time): sent after the next
  // reconnect, so that a slot this process gave up does not stay taken while it lives.
  std::vector<nlohmann::json> pending_releases;

  int wake = -1;  // eventfd: wakes the monitor thread at shutdown instead of waiting out its poll

  ~ClientCore() {
    stopping.store(true);
    if (wake >= 0) {
      const std::uint64_t one = 1;
      [[maybe_unused]] ssize_t n = ::write(wake, &one, sizeof one);
    }
    if (monitor.joinable()) monitor.join();
    if (fd >= 0) ::close(fd);
    if (wake >= 0) ::close(wake);
  }

  // Connect and say hello; with `spawn`, start a broker when none answers. Caller holds mu.
  Status connect_locked(bool spawn);
  Status reattach_locked();
  // A control call. With `reconnect`, a lost connection is re-established (autostarting a broker if
  // allowed) and the call retried once; without, it fails with Errc::unavailable. When the call times
  // out and `undo` is given, `undo` is sent on the same connection without waiting for its answer: the
  // broker handles requests in order, so it cancels whatever the timed-out request does once it runs.
  Result<nlohmann::json> call(const nlohmann::json& req, bool reconnect = true,
                              const nlohmann::json* undo = nullptr);
  // Give a slot back (unsubscribe, unpublish); kept for the next connection when no broker answers.
  void release_slot(const nlohmann::json& req);
  void sleep_or_wake(std::chrono::milliseconds d);
  Result<std::shared_ptr<TopicHandle>> open_topic(std::string_view name, TopicInfo* info);
  void watch();
};

struct PortState {
  std::shared_ptr<ClientCore> core;
  std::shared_ptr<TopicHandle> topic;
  PortKind kind = PortKind::producer;
  std::string name;
  std::uint64_t topic_id = 0;
  std::uint64_t port = 0;
  std::uint64_t id = 0;   // publisher id: identity pid << 32 | port
  std::uint64_t seq = 0;  // producer sequence
  std::uint32_t spin = 0;
  std::uint32_t slot = 0;
  bool registered = false;  // holds a broker slot (publisher, subscriber)
  std::unique_ptr<StreamPublisher> spub;
  std::unique_ptr<StreamSubscriber> ssub;
  // After moves to new slots: the earlier subscribers, kept so that samples they handed out can go back
  // through them (moves are rare: a broker restart that outlasted its grace period).
  std::vector<std::unique_ptr<StreamSubscriber>> old_ssubs;
  // Set by the reconnect thread when the broker gave this subscriber a new slot; the port's thread moves.
  std::atomic<std::uint32_t> new_slot{kNoSlot};
  // Set (under core->mu) when a new broker refused to give the slot back: the port reports it.
  std::atomic<bool> lost{false};
  std::string lost_reason;
};

Status check_echo(const nlohmann::json& r, const char* key, const nlohmann::json& want, const char* op) {
  auto it = r.find(key);
  if (it == r.end() || *it != want)
    return Error(Errc::protocol_error, std::string("the broker answered \"") + op + "\" for " + key + " " +
                                           (it == r.end() ? std::string("(none)") : it->dump()) + ", not " +
                                           want.dump());
  return {};
}

Status ClientCore::connect_locked(bool spawn) {
  auto fd_or = control::connect_socket(socket);
  if (!fd_or && fd_or.error().code() == Errc::unavailable && spawn && autostart) {
    if (auto st = spawn_broker(domain); !st) return st.error();
    const auto deadline = std::chrono::steady_clock::now() + connect_timeout;
    while (!fd_or && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(10ms);
      fd_or = control::connect_socket(socket);
    }
    if (!fd_or)
      return Error(Errc::unavailable, "started a broker for domain " + qname(domain) +
                                          " but it did not answer within " +
                                          std::to_string(connect_timeout.count()) +
                                          " ms (see its log, broker.log in the domain directory)");
  }
  if (!fd_or) {
    if (fd_or.error().code() == Errc::unavailable)
      return Error(
          Errc::unavailable,
          "no broker runs for domain " + qname(domain) +
              (autostart ? ""
                         : " and autostart is off (SHMBUS_AUTOSTART=0); start one with `shmbus broker`"));
    return fd_or.error();
  }
  const int nfd = *fd_or;
  auto hello =
      control::call(nfd, {{"op", "hello"}, {"version", control::kProtocolVersion}, {"client", name}}, 5000ms);
  if (!hello) {
    ::close(nfd);
    return hello.error();
  }
  const auto id_it = hello->find("identity");
  const OwnerId given{id_it != hello->end() && id_it->is_number_unsigned() ? id_it->get<std::uint64_t>() : 0};
  if (!given.valid()) {
    ::close(nfd);
    return Error(Errc::protocol_error, "the broker of domain " + qname(domain) +
                                           " did not say which identity this process has (hello without "
                                           "\"identity\")");
  }
  if (identity.valid() && !(given == identity)) {
    // Everything this process holds is stamped with the old identity; a broker that names it otherwise
    // (it runs in another pid namespace) would take it for dead and hand its messages to others.
    ::close(nfd);
    return Error(Errc::protocol_error,
                 "the broker of domain " + qname(domain) + " names this process pid " +
                     std::to_string(given.pid()) + ", the previous one named it pid " +
                     std::to_string(identity.pid()) +
                     " (a broker in another pid namespace?); not reconnecting, to keep ownership exact");
  }
  identity = given;
  if (fd >= 0) ::close(fd);
  fd = nfd;
  connected.store(true);
  return reattach_locked();
}

Status ClientCore::reattach_locked() {
  for (auto it = pending_releases.begin(); it != pending_releases.end();) {
    auto r = control::call(fd, *it, 5000ms);
    if (!r && r.error().code() == Errc::closed) return r.error();
    it = pending_releases.erase(it);  // done, or refused (the slot is gone already)
  }
  std::vector<std::weak_ptr<PortState>> live;
  for (auto& w : ports) {
    auto p = w.lock();
    if (!p || !p->registered) continue;
    live.push_back(w);
    const bool pub = p->kind == PortKind::publisher;
    auto r = control::call(fd,
                           {{"op", pub ? "reattach_publisher" : "reattach"},
                            {"name", p->name},
                            {"id", p->topic_id},
                            {"slot", p->slot},
                            {"port", p->port}},
                           5000ms);
    if (!r && r.error().code() == Errc::closed) return r.error();
    Status echo = r ? check_echo(*r, "slot", p->slot, "reattach") : Status(r.error());
    if (echo) echo = check_echo(*r, "name", p->name, "reattach");
    if (echo) echo = check_echo(*r, "port", p->port, "reattach");
    if (echo) continue;
    if (!pub && r.error().code() == Errc::not_found && !p->topic->deleted()) {
      // The broker closed our slot while we were away (it frees what nobody claims back within its
      // grace period). Subscribe anew; the port's own thread moves over at its next receive, and what it
      // missed meanwhile shows in the sequence numbers.
      auto again = control::call(fd, {{"op", "subscribe"}, {"name", p->name}, {"port", p->port}}, 5000ms);
      if (again && again->value("id", std::uint64_t{0}) != p->topic_id) {
        p->lost_reason = "the subscription on " + qname(p->name) +
                         " could not be taken back after the broker restarted: the topic was created anew";
        p->lost.store(true, std::memory_order_release);
        continue;
      }
      if (again && again->contains("slot") && (*again)["slot"].is_number_unsigned() &&
          (*again)["slot"].get<std::uint64_t>() < p->topic->max_subscribers()) {
        p->new_slot.store((*again)["slot"].get<std::uint32_t>(), std::memory_order_release);
        // A receive() parked on the old slot's wake word moves over when it wakes: wake it.
        if (p->slot < p->topic->max_subscribers()) EventCount(&p->topic->slot(p->slot)->ec).notify();
        continue;
      }
      if (!again && again.error().code() == Errc::closed) return again.error();
      echo = again ? Status(Error(Errc::protocol_error, "subscribe answered without a slot"))
                   : Status(again.error());
    }
    p->lost_reason = std::string("the ") + (pub ? "publisher" : "subscription") + " on " + qname(p->name) +
                     " could not be taken back after the broker restarted: " + echo.error().message();
    p->lost.store(true, std::memory_order_release);
  }
  ports = std::move(live);
  return {};
}

Result<nlohmann::json> ClientCore::call(const nlohmann::json& req, bool reconnect,
                                        const nlohmann::json* undo) {
  std::lock_guard<std::mutex> lock(mu);
  if (!connected.load()) {
    if (!reconnect) return Error(Errc::unavailable, "not connected to the broker of domain " + qname(domain));
    if (auto st = connect_locked(true); !st) return st.error();
  }
  auto r = control::call(fd, req, request_timeout);
  if (!r && r.error().code() == Errc::closed && reconnect) {  // the broker went away: reconnect, retry once
    connected.store(false);
    if (auto st = connect_locked(true); !st) return st.error();
    r = control::call(fd, req, request_timeout);
  }
  if (!r && r.error().code() == Errc::timed_out) {
    if (undo != nullptr) {
      nlohmann::json u = *undo;
      u["req_id"] = control::next_request_id();
      (void)control::send_frame(fd, u);  // its answer, like the late one, is dropped by the next call
    }
    return Error(Errc::timed_out, "the broker of domain " + qname(domain) + " did not answer \"" +
                                      req.value("op", std::string("?")) + "\" within " +
                                      std::to_string(request_timeout.count()) + " ms");
  }
  return r;
}

// The reconnect thread: notices a broker that went away (POLLHUP on the socket, without reading it, so
// it never steals a reply) and reconnects with back-off, re-registering the subscriber slots.
void ClientCore::watch() {
  auto backoff = 20ms;
  while (!stopping.load()) {
    if (connected.load()) {
      int f;
      {
        std::lock_guard<std::mutex> lock(mu);
        f = fd;
      }
      pollfd p[2] = {{f, POLLRDHUP, 0}, {wake, POLLIN, 0}};
      const int n = ::poll(p, 2, 1000);
      if (n > 0 && (p[0].revents & (POLLHUP | POLLRDHUP | POLLERR | POLLNVAL))) {
        std::lock_guard<std::mutex> lock(mu);
        if (fd == f) connected.store(false);
      }
      backoff = 20ms;
      continue;
    }
    sleep_or_wake(backoff);
    if (stopping.load()) break;
    std::lock_guard<std::mutex> lock(mu);
    if (!connected.load() && !connect_locked(true))
      backoff = std::min<std::chrono::milliseconds>(backoff * 2, 1000ms);
  }
}

void ClientCore::sleep_or_wake(std::chrono::milliseconds d) {
  pollfd p{wake, POLLIN, 0};
  ::poll(&p, 1, static_cast<int>(d.count()));
}

Result<std::shared_ptr<TopicHandle>> ClientCore::open_topic(std::string_view topic_name, TopicInfo* info) {
  if (auto ok = check_topic_name(topic_name); !ok) return ok.error();
  auto dir = DirectoryView::open(domain);
  if (!dir)
    return Error(dir.error().code() == Errc::not_found ? Errc::unavailable : dir.error().code(),
                 "cannot read the topic directory of domain " + qname(domain) + ": " + dir.error().message());
  auto found = dir->find(topic_name);
  if (!found)
    return Error(Errc::not_found, "topic " + qname(topic_name) + " does not exist in domain " +
                                      qname(domain) + "; create it with `shmbus topic create " +
                                      std::string(topic_name) + " --kind stream|queue`");
  *info = *found;
  std::lock_guard<std::mutex> lock(mu);
  if (auto it = topics.find(found->id); it != topics.end())
    if (auto t = it->second.lock()) return t;
  auto t = TopicHandle::open(domain, found->id);
  if (!t) return t.error();
  // Stamp what the broker can check: this process as the broker's pid namespace names it.
  t->set_identity(identity);
  auto sp = std::make_shared<TopicHandle>(std::move(t).value());
  topics[found->id] = sp;
  return sp;
}

void ClientCore::release_slot(const nlohmann::json& req) {
  // Never reconnect (or autostart a broker) just to give a slot back: without a broker, the request
  // waits for the next connection (reattach_locked), or for this process's exit, which frees it anyway.
  // (A timed-out request is still in the broker's queue on this connection: it runs when the broker does.)
  auto r = call(req, false);
  if (!r && (r.error().code() == Errc::unavailable || r.error().code() == Errc::closed)) {
    std::lock_guard<std::mutex> lock(mu);
    pending_releases.push_back(req);
  }
}

std::uint64_t realtime_ns() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000ULL + static_cast<std::uint64_t>(ts.tv_nsec);
}

Error topic_gone(const std::string& name) {
  return Error(
      Errc::not_found,
      "topic " + qname(name) + " was deleted (topic delete, or stop --purge): open it again once it exists");
}

// The Error a failed publish returns (strings are built here, off the hot path).
Status publish_error(const PortState& p, PublishStatus st, std::size_t size = 0) {
  switch (st) {
    case PublishStatus::ok:
    case PublishStatus::no_subscribers:
      return {};
    case PublishStatus::missed_by_some:
      // Drop-oldest: a subscriber that falls behind loses messages by design and learns how many from
      // its missed count; the publish succeeded. Block: the timeout passed, which is the caller's error.
      if (p.topic->overflow() == Overflow::drop_oldest) return {};
      return Error(Errc::timed_out,
                   "stream " + qname(p.name) + ": some subscribers stayed full and missed the message");
    case PublishStatus::full:
      return Error(Errc::timed_out, "queue " + qname(p.name) + " stayed full for the whole timeout");
    case PublishStatus::too_large:
      if (size > p.topic->max_size())
        return Error(Errc::too_large, "message of " + std::to_string(size) +
                                          " bytes exceeds the max size of topic " + qname(p.name) + " (" +
                                          std::to_string(p.topic->max_size()) + " bytes)");
      return Error(Errc::too_large, "topic " + qname(p.name) + ": the message's attributes exceed " +
                                        std::to_string(p.topic->attrs_max()) +
                                        " bytes encoded, or an attribute key is empty or over 255 bytes");
    case PublishStatus::no_chunk:
      return Error(Errc::timed_out, "topic " + qname(p.name) +
                                        ": no free chunk within the timeout (every chunk is queued or held)");
    case PublishStatus::deleted:
      return topic_gone(p.name);
    case PublishStatus::closed:
      return Error(Errc::closed, p.lost.load() ? p.lost_reason
                                               : "the broker released this publisher on " + qname(p.name) +
                                                     ": create a new one");
  }
  return {};
}

PublishStatus from_send(SendStatus s) {
  switch (s) {
    case SendStatus::ok:
      return PublishStatus::ok;
    case SendStatus::no_subscribers:
      return PublishStatus::no_subscribers;
    case SendStatus::some_missed:
      return PublishStatus::missed_by_some;
    case SendStatus::too_large:
      return PublishStatus::too_large;
    case SendStatus::no_chunk:
      return PublishStatus::no_chunk;
    case SendStatus::deleted:
      return PublishStatus::deleted;
    case SendStatus::closed:
      return PublishStatus::closed;
  }
  return PublishStatus::closed;
}

// The consumer port whose try_receive_batch() runs on this thread: its acks leave the wake-up of
// waiting producers to the batch's end.
thread_local PortState* t_queue_batch = nullptr;

// The queue producer's publish of a held chunk. On success the chunk is given away.
PublishStatus produce(PortState& p, std::uint32_t chunk, std::size_t size, AttrList attrs,
                      const Deadline& deadline) noexcept {
  TopicHandle& t = *p.topic;
  if (t.deleted()) return PublishStatus::deleted;
  std::string* no_why = nullptr;
  const std::size_t asz = attrs.empty() ? 0 : encoded_attrs_size(attrs, no_why);
  if (size > t.max_size() || asz > t.attrs_max() || (!attrs.empty() && asz == 0))
    return PublishStatus::too_large;
  MessageHeader* h = t.header(chunk);
  h->attrs_size = static_cast<std::uint32_t>(asz);
  if (asz != 0) encode_attrs(attrs, t.attrs(chunk));
  h->seq = ++p.seq;
  h->publisher = p.id;
  h->timestamp_ns = 0;
  h->payload_size = static_cast<std::uint32_t>(size);
  h->flags = 0;
  if (t.push_queue(chunk, deadline) != TopicHandle::IoStatus::ok) {
    --p.seq;
    return PublishStatus::full;
  }
  t.shared()->published.fetch_add(1, std::memory_order_relaxed);  // relaxed: a statistic
  return PublishStatus::ok;
}

// A subscriber whose slot the broker replaced: move to the new one, keeping what we know of each
// publisher's sequence (so a gap shows as missed). Rare, so allocating here is fine.
void move_subscriber(PortState& p, std::uint32_t slot) {
  auto next = StreamSubscriber::attach(p.topic, slot);
  if (!next) {
    std::lock_guard<std::mutex> lock(p.core->mu);
    p.lost_reason = "the subscription on " + qname(p.name) +
                    " moved to a new slot that could not be opened: " + next.error().message();
    p.lost.store(true);
    return;
  }
  p.ssub->hand_over(**next);
  p.old_ssubs.push_back(std::move(p.ssub));
  p.ssub = std::move(next).value();
  std::lock_guard<std::mutex> lock(p.core->mu);  // reattach_locked() reads the slot
  p.slot = slot;
}

}  // namespace detail

using detail::check_echo;
using detail::PortKind;
using detail::qname;

const char* to_string(PublishStatus s) {
  switch (s) {
    case PublishStatus::ok:
      return "ok";
    case PublishStatus::no_subscribers:
      return "no_subscribers";
    case PublishStatus::missed_by_some:
      return "missed_by_some";
    case PublishStatus::full:
      return "full";
    case PublishStatus::too_large:
      return "too_large";
    case PublishStatus::no_chunk:
      return "no_chunk";
    case PublishStatus::deleted:
      return "deleted";
    case PublishStatus::closed:
      return "closed";
  }
  return "?";
}

// ---- Sample / Delivery / Loan ----

void Sample::move_from(Sample& o) noexcept {
  where_ = o.where_;
  redelivered_ = o.redelivered_;
  port_ = o.port_;
  // The fixed fields, and of the inline bytes only those in use.
  sub_ = o.sub_;
  r_.is_chunk = o.r_.is_chunk;
  r_.chunk = o.r_.chunk;
  r_.conn = o.r_.conn;
  r_.size = o.r_.size;
  r_.attrs_size = o.r_.attrs_size;
  r_.seq = o.r_.seq;
  r_.publisher = o.r_.publisher;
  r_.timestamp_ns = o.r_.timestamp_ns;
  r_.missed = o.r_.missed;
  if (where_ == Where::copy) std::memcpy(r_.bytes, o.r_.bytes, r_.size + r_.attrs_size);
  o.where_ = Where::none;
}
Sample::Sample(Sample&& o) noexcept {
  move_from(o);
}
Sample& Sample::operator=(Sample&& o) noexcept {
  if (this != &o) {
    reset();
    move_from(o);
  }
  return *this;
}
Sample::~Sample() {
  reset();
}
void Sample::reset() noexcept {
  switch (where_) {
    case Where::stream_chunk:
      sub_->release(r_.conn, r_.chunk);  // through the subscriber that took it
      break;
    case Where::queue_chunk:
      if (detail::t_queue_batch == port_)
        port_->topic->pool().release(r_.chunk);  // an ack inside this thread's batch: it wakes at its end
      else
        port_->topic->release(r_.chunk);
      break;
    default:
      break;
  }
  where_ = Where::none;
}
// A Sample (or the Delivery around it) that was released, acked, nacked or moved from holds no chunk:
// its accessors return empty values rather than read a chunk that may belong to someone else by now.
std::span<const std::byte> Sample::bytes() const {
  switch (where_) {
    case Where::copy:
      return {r_.bytes, r_.size};
    case Where::stream_chunk: {  // the sizes came in the connection's slot: the chunk's header stays cold
      const TopicHandle& t = *port_->topic;
      return {t.payload(r_.chunk), std::min<std::size_t>(r_.size, t.max_size())};
    }
    case Where::queue_chunk: {
      const TopicHandle& t = *port_->topic;
      const std::size_t n = std::min<std::size_t>(t.header(r_.chunk)->payload_size, t.max_size());
      return {t.payload(r_.chunk), n};
    }
    default:
      return {};
  }
}
std::span<const std::byte> Sample::attr_bytes() const {
  switch (where_) {
    case Where::copy:
      return {r_.bytes + r_.size, r_.attrs_size};
    case Where::stream_chunk: {
      const TopicHandle& t = *port_->topic;
      return {t.attrs(r_.chunk), std::min<std::size_t>(r_.attrs_size, t.attrs_max())};
    }
    case Where::queue_chunk: {
      const TopicHandle& t = *port_->topic;
      return {t.attrs(r_.chunk), std::min<std::size_t>(t.header(r_.chunk)->attrs_size, t.attrs_max())};
    }
    default:
      return {};
  }
}
std::string_view Sample::text() const {
  auto b = bytes();
  return {reinterpret_cast<const char*>(b.data()), b.size()};
}
std::string Sample::topic() const {
  return where_ != Where::none ? port_->name : std::string();
}
std::optional<AttrValue> Sample::attr(std::string_view key) const {
  const auto a = attr_bytes();
  return a.empty() ? std::nullopt : find_attr(a.data(), a.size(), key);
}
std::vector<Attr> Sample::attrs() const {
  const auto a = attr_bytes();
  return a.empty() ? std::vector<Attr>{} : decode_attrs(a.data(), a.size());
}

Delivery::~Delivery() {
  nack();
}

Delivery& Delivery::operator=(Delivery&& o) noexcept {
  if (this != &o) {
    nack();  // not a silent release: what we held goes back to the queue, as on destruction
    sample_ = std::move(o.sample_);
  }
  return *this;
}

void Delivery::ack() noexcept {
  if (sample_.where_ != Sample::Where::queue_chunk) return;
  sample_.port_->topic->shared()->acked.fetch_add(1, std::memory_order_relaxed);  // relaxed: a statistic
  sample_.reset();
}

void Delivery::nack() noexcept {
  if (sample_.where_ != Sample::Where::queue_chunk) return;
  TopicHandle* t = sample_.port_->topic.get();
  const std::uint32_t c = sample_.r_.chunk;
  sample_.where_ = Sample::Where::none;
  t->shared()->nacked.fetch_add(1, std::memory_order_relaxed);
  t->pool().header(c).flags.fetch_or(kChunkRedelivered, std::memory_order_relaxed);  // published by the push
  t->header(c)->flags |= kMsgRedelivered;
  // Back to the queue for another consumer, at once: the queue's ring has a cell for every chunk, so this
  // never waits, even when producers filled the queue meanwhile (a lone consumer of a full queue must not
  // wait for itself). Should a damaged ring refuse it, the chunk stays ours and the broker redelivers it
  // when this process exits: nothing is lost.
  (void)t->requeue(c);
}

Loan::Loan(Loan&& o) noexcept : port_(o.port_), chunk_(o.chunk_), size_(o.size_) {
  o.port_ = nullptr;
}
Loan& Loan::operator=(Loan&& o) noexcept {
  if (this != &o) {
    give_back();
    port_ = o.port_;
    chunk_ = o.chunk_;
    size_ = o.size_;
    o.port_ = nullptr;
  }
  return *this;
}
Loan::~Loan() {
  give_back();
}
void Loan::give_back() noexcept {
  if (port_ == nullptr) return;
  if (port_->spub)
    port_->spub->unloan(chunk_);
  else
    port_->topic->release(chunk_);
  port_ = nullptr;
}
std::byte* Loan::data() const {
  return port_ != nullptr ? port_->topic->payload(chunk_) : nullptr;
}
void Loan::resize(std::size_t n) {
  SHMBUS_ASSERT(n <= size_);
  size_ = n;
}

// ---- Publisher ----

Publisher::Publisher(Publisher&&) noexcept = default;
Publisher& Publisher::operator=(Publisher&&) noexcept = default;
Publisher::~Publisher() {
  if (!p_ || !p_->registered) return;
  p_->registered = false;
  p_->spub.reset();  // the cache goes back to the pool before the broker retires the slot
  p_->core->release_slot({{"op", "unpublish"}, {"name", p_->name}, {"slot", p_->slot}, {"port", p_->port}});
}
Result<Loan> Publisher::loan(std::size_t size, std::chrono::nanoseconds timeout) {
  detail::PortState& p = *p_;
  if (size > p.topic->max_size())
    return Error(Errc::too_large, "message of " + std::to_string(size) +
                                      " bytes exceeds the max size of topic " + qname(p.name) + " (" +
                                      std::to_string(p.topic->max_size()) + " bytes)");
  std::uint32_t c;
  const auto st = detail::from_send(p.spub->loan(c, Deadline::after(timeout)));
  if (st != PublishStatus::ok) return detail::publish_error(p, st).error();
  return Loan(&p, c, size);
}
PublishStatus Publisher::try_publish(Loan&& loan, AttrList attrs) noexcept {
  detail::PortState& p = *p_;
  if (loan.port_ != &p) return PublishStatus::closed;
  loan.port_ = nullptr;  // given away in every case
  return detail::from_send(p.spub->publish_chunk(loan.chunk_, loan.size_, attrs, Deadline::now()));
}
Status Publisher::publish(Loan&& loan, AttrList attrs, std::chrono::nanoseconds timeout) {
  detail::PortState& p = *p_;
  if (loan.port_ != &p)
    return Error(Errc::invalid_argument, "the loan belongs to another port or was published already");
  loan.port_ = nullptr;
  const std::size_t n = loan.size_;
  return detail::publish_error(
      p, detail::from_send(p.spub->publish_chunk(loan.chunk_, n, attrs, Deadline::after(timeout))), n);
}
PublishStatus Publisher::try_publish(std::span<const std::byte> bytes, AttrList attrs) noexcept {
  return detail::from_send(p_->spub->publish(bytes.data(), bytes.size(), attrs, Deadline::now()));
}
Status Publisher::publish(std::span<const std::byte> bytes, AttrList attrs,
                          std::chrono::nanoseconds timeout) {
  return detail::publish_error(
      *p_, detail::from_send(p_->spub->publish(bytes.data(), bytes.size(), attrs, Deadline::after(timeout))),
      bytes.size());
}
Status Publisher::publish(std::string_view text, AttrList attrs, std::chrono::nanoseconds timeout) {
  return publish(std::as_bytes(std::span<const char>(text.data(), text.size())), attrs, timeout);
}
std::string Publisher::topic() const {
  return p_->name;
}
std::uint64_t Publisher::id() const {
  return p_->id;
}
std::size_t Publisher::max_size() const {
  return p_->topic->max_size();
}

// ---- Producer ----

Producer::Producer(Producer&&) noexcept = default;
Producer& Producer::operator=(Producer&&) noexcept = default;
Producer::~Producer() = default;
Result<Loan> Producer::loan(std::size_t size, std::chrono::nanoseconds timeout) {
  detail::PortState& p = *p_;
  if (size > p.topic->max_size())
    return Error(Errc::too_large, "message of " + std::to_string(size) +
                                      " bytes exceeds the max size of topic " + qname(p.name) + " (" +
                                      std::to_string(p.topic->max_size()) + " bytes)");
  if (p.topic->deleted()) return detail::topic_gone(p.name);
  std::uint32_t c;
  if (p.topic->allocate(c, Deadline::after(timeout)) != TopicHandle::IoStatus::ok)
    return detail::publish_error(p, PublishStatus::no_chunk).error();
  return Loan(&p, c, size);
}
Status Producer::publish(Loan&& loan, AttrList attrs, std::chrono::nanoseconds timeout) {
  detail::PortState& p = *p_;
  if (loan.port_ != &p)
    return Error(Errc::invalid_argument, "the loan belongs to another port or was published already");
  const auto st = detail::produce(p, loan.chunk_, loan.size_, attrs, Deadline::after(timeout));
  if (st == PublishStatus::ok) loan.port_ = nullptr;  // given away; otherwise still ours (the Loan frees it)
  return detail::publish_error(p, st, loan.size_);
}
PublishStatus Producer::try_publish(std::span<const std::byte> bytes, AttrList attrs) noexcept {
  detail::PortState& p = *p_;
  if (bytes.size() > p.topic->max_size()) return PublishStatus::too_large;
  std::uint32_t c;
  if (p.topic->allocate(c, Deadline::now()) != TopicHandle::IoStatus::ok) return PublishStatus::no_chunk;
  std::memcpy(p.topic->payload(c), bytes.data(), bytes.size());
  const auto st = detail::produce(p, c, bytes.size(), attrs, Deadline::now());
  if (st != PublishStatus::ok) p.topic->release(c);
  return st;
}
Status Producer::publish(std::span<const std::byte> bytes, AttrList attrs, std::chrono::nanoseconds timeout) {
  auto l = loan(bytes.size(), timeout);
  if (!l) return l.error();
  std::memcpy(l->data(), bytes.data(), bytes.size());
  return publish(std::move(l).value(), attrs, timeout);
}
Status Producer::publish(std::string_view text, AttrList attrs, std::chrono::nanoseconds timeout) {
  return publish(std::as_bytes(std::span<const char>(text.data(), text.size())), attrs, timeout);
}
std::string Producer::topic() const {
  return p_->name;
}
std::size_t Producer::max_size() const {
  return p_->topic->max_size();
}

// ---- Subscriber ----

Subscriber::Subscriber(Subscriber&&) noexcept = default;
Subscriber& Subscriber::operator=(Subscriber&&) noexcept = default;
Subscriber::~Subscriber() {
  if (!p_ || !p_->registered) return;
  p_->registered = false;
  p_->core->release_slot({{"op", "unsubscribe"}, {"name", p_->name}, {"slot", p_->slot}, {"port", p_->port}});
}

std::optional<Sample> Subscriber::try_receive() noexcept {
  detail::PortState& p = *p_;
  if (const std::uint32_t ns = p.new_slot.load(std::memory_order_acquire); ns != detail::kNoSlot) {
    p.new_slot.store(detail::kNoSlot, std::memory_order_relaxed);
    detail::move_subscriber(p, ns);
  }
  if (p.topic->deleted()) return std::nullopt;
  Sample s;
  if (!p.ssub->try_receive(s.r_)) return std::nullopt;
  s.port_ = &p;
  s.sub_ = p.ssub.get();
  s.where_ = s.r_.is_chunk ? Sample::Where::stream_chunk : Sample::Where::copy;
  return s;
}

std::size_t Subscriber::try_receive_batch_impl(void (*fn)(void*, Sample&), void* ctx, std::size_t max) {
  detail::PortState& p = *p_;
  if (const std::uint32_t ns = p.new_slot.load(std::memory_order_acquire); ns != detail::kNoSlot) {
    p.new_slot.store(detail::kNoSlot, std::memory_order_relaxed);
    detail::move_subscriber(p, ns);
  }
  if (p.topic->deleted()) return 0;
  detail::StreamSubscriber& sub = *p.ssub;
  // The batch ends (its tails go out) however f leaves: a throwing f must not strand a blocked publisher.
  struct End {
    detail::StreamSubscriber& s;
    ~End() { s.end_batch(); }
  } end{sub};
  sub.begin_batch();
  std::size_t n = 0;
  for (; n < max; ++n) {
    Sample s;
    if (!sub.try_receive(s.r_)) break;
    s.port_ = &p;
    s.sub_ = &sub;
    s.where_ = s.r_.is_chunk ? Sample::Where::stream_chunk : Sample::Where::copy;
    fn(ctx, s);
  }
  return n;
}

Result<Sample> Subscriber::receive(std::chrono::nanoseconds timeout) {
  detail::PortState& p = *p_;
  if (p.topic->deleted()) return detail::topic_gone(p.name);  // its messages went with it
  if (auto s = try_receive()) return std::move(*s);
  std::optional<Sample> got;
  const auto until = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    // Parked on this slot's wake word; if the port moves to a new slot meanwhile (the broker replaced
    // it), wait again on the new one's.
    const detail::StreamSubscriber* on = p.ssub.get();
    EventCount(on->wake())
        .await(
            [&] { return (got = try_receive()).has_value() || p.ssub.get() != on; },
            std::max(until - std::chrono::steady_clock::now(), std::chrono::steady_clock::duration::zero()),
            p.spin);
    if (got || p.ssub.get() == on) break;
  }
  if (got) return std::move(*got);
  if (p.topic->deleted()) return detail::topic_gone(p.name);
  if (p.lost.load() || p.ssub->closed()) {
    std::lock_guard<std::mutex> lock(p.core->mu);
    return Error(Errc::closed, p.lost.load() ? p.lost_reason
                                             : "the broker closed this subscription on " + qname(p.name) +
                                                   " (it took this process for gone): subscribe again");
  }
  return Error(Errc::timed_out, "no message on " + qname(p.name) + " within the timeout");
}

std::string Subscriber::topic() const {
  return p_->name;
}
std::uint32_t Subscriber::slot() const {
  return p_->slot;
}

// ---- Consumer ----

Consumer::Consumer(Consumer&&) noexcept = default;
Consumer& Consumer::operator=(Consumer&&) noexcept = default;
Consumer::~Consumer() = default;

// The Delivery of chunk c, just popped from the queue.
Delivery Consumer::delivery_of(detail::PortState& p, std::uint32_t c) noexcept {
  TopicHandle& t = *p.topic;
  Sample s;
  s.port_ = &p;
  s.where_ = Sample::Where::queue_chunk;
  const MessageHeader* h = t.header(c);
  s.r_.is_chunk = true;
  s.r_.chunk = c;
  s.r_.seq = h->seq;
  s.r_.publisher = h->publisher;
  s.r_.timestamp_ns = h->timestamp_ns;
  s.redelivered_ = (t.pool().header(c).flags.load(std::memory_order_relaxed) & kChunkRedelivered) != 0 ||
                   (h->flags & kMsgRedelivered) != 0;
  return Delivery(std::move(s));
}

std::optional<Delivery> Consumer::try_receive() noexcept {
  detail::PortState& p = *p_;
  TopicHandle& t = *p.topic;
  std::uint32_t c;
  if (t.deleted() || t.pool().try_pop(TopicHandle::kQueueRing, c) != RingStatus::ok) return std::nullopt;
  t.shared()->delivered.fetch_add(1, std::memory_order_relaxed);  // relaxed: a statistic
  t.notify(TopicHandle::WaitOn::space);                           // a producer may wait for room
  return delivery_of(p, c);
}

std::size_t Consumer::try_receive_batch_impl(void (*fn)(void*, Delivery&), void* ctx, std::size_t max) {
  detail::PortState& p = *p_;
  TopicHandle& t = *p.topic;
  if (t.deleted()) return 0;
  std::size_t n = 0;
  // The batch ends (its count and its one wake-up go out) however f leaves: a throwing f must not leave
  // a producer waiting for room that this batch made. Only this thread's acks defer their wake-up to it
  // (t_queue_batch): an ack from another thread meanwhile wakes as usual.
  struct End {
    TopicHandle& t;
    std::size_t& n;
    detail::PortState* outer;
    ~End() {
      detail::t_queue_batch = outer;
      if (n == 0) return;
      t.shared()->delivered.fetch_add(n, std::memory_order_relaxed);  // relaxed: a statistic
      t.notify(TopicHandle::WaitOn::space);                           // the pops and the acks made room
    }
  } end{t, n, detail::t_queue_batch};
  detail::t_queue_batch = &p;
  // At most what is ready now: a Delivery f leaves alone goes back to the queue at once, and must not be
  // taken again by this batch (a consumer that declines everything would never return).
  max = std::min<std::size_t>(max, t.pool().ring(TopicHandle::kQueueRing).size_approx());
  // deleted(): f may delete the topic; its ports fail from then on.
  for (std::uint32_t c;
       n < max && !t.deleted() && t.pool().try_pop(TopicHandle::kQueueRing, c) == RingStatus::ok;) {
    ++n;
    Delivery d = delivery_of(p, c);
    fn(ctx, d);
  }
  return n;
}

Result<Delivery> Consumer::receive(std::chrono::nanoseconds timeout) {
  detail::PortState& p = *p_;
  if (p.topic->deleted()) return detail::topic_gone(p.name);  // its messages went with it
  if (auto d = try_receive()) return std::move(*d);
  std::optional<Delivery> got;
  p.topic->wait_for(
      TopicHandle::WaitOn::not_empty, [&] { return (got = try_receive()).has_value(); },
      Deadline::after(timeout), p.spin);
  if (got) return std::move(*got);
  if (p.topic->deleted()) return detail::topic_gone(p.name);
  return Error(Errc::timed_out, "no message on " + qname(p.name) + " within the timeout");
}

std::string Consumer::topic() const {
  return p_->name;
}

// ---- Client ----

Result<Client> Client::connect(const ClientOptions& options) {
  auto core = std::make_shared<detail::ClientCore>();
  core->domain = options.domain.empty() ? default_domain() : options.domain;
  if (auto ok = check_domain_name(core->domain); !ok) return ok.error();
  core->name = options.name.empty() ? std::string(program_invocation_short_name) : options.name;
  if (options.autostart) {
    core->autostart = *options.autostart;
  } else {
    const char* e = std::getenv("SHMBUS_AUTOSTART");
    core->autostart = !(e != nullptr && std::string_view(e) == "0");
  }
  core->connect_timeout = options.connect_timeout;
  core->request_timeout = options.request_timeout;
  auto path = control::socket_path(core->domain);
  if (!path) return path.error();
  core->socket = *path;
  {
    std::lock_guard<std::mutex> lock(core->mu);
    if (auto st = core->connect_locked(true); !st) return st.error();
  }
  core->wake = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (core->wake < 0) return Error::from_errno(errno, "eventfd for the client's monitor thread");
  core->monitor = std::thread([c = core.get()] { c->watch(); });
  return Client(std::move(core));
}

Client::Client(Client&&) noexcept = default;
Client& Client::operator=(Client&&) noexcept = default;
Client::~Client() = default;

namespace {
std::shared_ptr<detail::PortState> new_port(const std::shared_ptr<detail::ClientCore>& core,
                                            std::shared_ptr<TopicHandle> t, const TopicInfo& info,
                                            PortKind kind) {
  auto p = std::make_shared<detail::PortState>();
  p->core = core;
  p->topic = std::move(t);
  p->kind = kind;
  p->name = info.name;
  p->topic_id = info.id;
  // Unique in the process, not per Client: the broker tells a retried request by (process, port).
  static std::atomic<std::uint64_t> next_port{1};
  p->port = next_port.fetch_add(1, std::memory_order_relaxed);
  // The pid the broker sees: unique across pid namespaces, unlike getpid() in a container.
  p->id = (static_cast<std::uint64_t>(core->identity.pid()) << 32) | (p->port & 0xffffffffu);
  return p;
}

Error wrong_kind(const std::string& name, TopicKind is, const char* use) {
  return Error(Errc::invalid_argument, "topic " + qname(name) + " is a " + to_string(is) + ": use a " + use);
}

// Ask the broker for a slot (`op`: "subscribe" or "publisher"), checking what it answers. Should the
// broker answer too late, it still grants the slot when it gets to the request: the undo frees it.
Result<std::uint32_t> take_slot(detail::ClientCore& core, detail::PortState& p, const char* op,
                                const char* undo_op, std::uint32_t max) {
  const nlohmann::json undo = {{"op", undo_op}, {"name", p.name}, {"port", p.port}};
  auto r = core.call({{"op", op}, {"name", p.name}, {"port", p.port}, {"pub_id", p.id}}, true, &undo);
  if (!r) return r.error();
  for (auto [key, want] :
       {std::pair<const char*, nlohmann::json>{"name", p.name}, {"port", p.port}, {"id", p.topic_id}})
    if (auto st = check_echo(*r, key, want, op); !st) return st.error();
  if (!(*r).contains("slot") || !(*r)["slot"].is_number_unsigned() ||
      (*r)["slot"].get<std::uint64_t>() >= max)
    return Error(Errc::protocol_error, std::string("broker answered ") + op + " without a valid slot");
  return (*r)["slot"].get<std::uint32_t>();
}
}  // namespace

Result<Publisher> Client::publisher(std::string_view topic, const PublisherOptions& options) {
  TopicInfo info;
  auto t = core_->open_topic(topic, &info);
  if (!t) return t.error();
  if ((*t)->kind() != TopicKind::stream) return wrong_kind(info.name, TopicKind::queue, "producer");
  auto p = new_port(core_, *t, info, PortKind::publisher);
  auto slot = take_slot(*core_, *p, "publisher", "unpublish", (*t)->max_publishers());
  if (!slot) return slot.error();
  auto sp = detail::StreamPublisher::attach(*t, *slot, options.timestamps);
  if (!sp) {
    core_->release_slot({{"op", "unpublish"}, {"name", p->name}, {"slot", *slot}, {"port", p->port}});
    return sp.error();
  }
  p->slot = *slot;
  p->spub = std::move(sp).value();
  p->registered = true;
  {
    std::lock_guard<std::mutex> lock(core_->mu);
    core_->ports.push_back(p);
  }
  return Publisher(std::move(p));
}

Result<Producer> Client::producer(std::string_view topic) {
  TopicInfo info;
  auto t = core_->open_topic(topic, &info);
  if (!t) return t.error();
  if ((*t)->kind() != TopicKind::queue) return wrong_kind(info.name, TopicKind::stream, "publisher");
  return Producer(new_port(core_, *t, info, PortKind::producer));
}

Result<Consumer> Client::consumer(std::string_view topic, const ConsumerOptions& options) {
  TopicInfo info;
  auto t = core_->open_topic(topic, &info);
  if (!t) return t.error();
  if ((*t)->kind() != TopicKind::queue) return wrong_kind(info.name, TopicKind::stream, "subscriber");
  auto p = new_port(core_, *t, info, PortKind::consumer);
  p->spin = options.spin;
  return Consumer(std::move(p));
}

Result<Subscriber> Client::subscriber(std::string_view topic, const SubscriberOptions& options) {
  TopicInfo info;
  auto t = core_->open_topic(topic, &info);
  if (!t) return t.error();
  if ((*t)->kind() != TopicKind::stream) return wrong_kind(info.name, TopicKind::queue, "consumer");
  auto p = new_port(core_, *t, info, PortKind::subscriber);
  auto slot = take_slot(*core_, *p, "subscribe", "unsubscribe", (*t)->max_subscribers());
  if (!slot) return slot.error();
  auto ss = detail::StreamSubscriber::attach(*t, *slot);
  if (!ss) {
    core_->release_slot({{"op", "unsubscribe"}, {"name", p->name}, {"slot", *slot}, {"port", p->port}});
    return ss.error();
  }
  p->slot = *slot;
  p->ssub = std::move(ss).value();
  p->spin = options.spin;
  p->registered = true;
  {
    std::lock_guard<std::mutex> lock(core_->mu);
    core_->ports.push_back(p);
  }
  return Subscriber(std::move(p));
}

Status Client::create_topic(std::string_view name, const TopicOptions& o) {
  if (auto ok = check_topic_name(name); !ok) return ok.error();
  if (auto ok = check_topic_options(o); !ok) return ok.error();
  nlohmann::json req = {{"op", "topic_create"},
                        {"name", name},
                        {"kind", to_string(o.kind)},
                        {"depth", o.depth},
                        {"max_size", o.max_size},
                        {"overflow", to_string(o.overflow)},
                        {"max_subscribers", o.max_subscribers},
                        {"max_publishers", o.max_publishers},
                        {"attrs_max", o.attrs_max}};
  auto r = core_->call(req);
  if (!r) return r.error();
  auto topic = r->find("topic");
  if (topic == r->end() || !topic->is_object())
    return Error(Errc::protocol_error, "broker answered topic_create without the topic");
  return check_echo(*topic, "name", name, "topic_create");
}

Status Client::delete_topic(std::string_view name) {
  auto r = core_->call({{"op", "topic_delete"}, {"name", name}});
  if (!r) return r.error();
  return check_echo(*r, "name", name, "topic_delete");
}

Result<nlohmann::json> Client::request(const nlohmann::json& message) {
  return core_->call(message);
}
const std::string& Client::domain() const {
  return core_->domain;
}
bool Client::connected() const {
  return core_->connected.load();
}

// ---- autostart ----

Status spawn_broker(std::string_view domain) {
  std::string bin;
  if (const char* e = std::getenv("SHMBUS_BROKER"); e != nullptr && *e != '\0') {
    bin = e;
  } else {
    char self[4096];
    const ssize_t n = ::readlink("/proc/self/exe", self, sizeof self - 1);
    if (n > 0) {
      std::string dir(self, static_cast<std::size_t>(n));
      dir = dir.substr(0, dir.rfind('/'));
      if (::access((dir + "/shmbus").c_str(), X_OK) == 0) bin = dir + "/shmbus";
    }
    if (bin.empty()) bin = "shmbus";  // PATH
  }
  auto ddir = domain_dir(domain);
  if (!ddir) return ddir.error();
  const std::string log = *ddir + "/broker.log";
  const std::string dom(domain);
  const pid_t pid = ::fork();
  if (pid < 0) return Error::from_errno(errno, "fork for the broker");
  if (pid == 0) {
    // First child: leave the session, fork the broker, exit, so the broker is nobody's child here.
    ::setsid();
    const pid_t b = ::fork();
    if (b != 0) ::_exit(b < 0 ? 1 : 0);
    const int in = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    const int out = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (in >= 0) ::dup2(in, 0);
    if (out >= 0) {
      ::dup2(out, 1);
      ::dup2(out, 2);
    }
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::execlp(bin.c_str(), bin.c_str(), "broker", "--autostart", "--domain", dom.c_str(),
             static_cast<char*>(nullptr));
    std::fprintf(stderr, "shmbus: cannot start broker %s: %s\n", bin.c_str(), std::strerror(errno));
    ::_exit(127);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    return Error(Errc::system_error, "could not fork the broker");
  return {};
}

}  // namespace shmbus
