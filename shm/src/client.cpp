// The user-facing API (shmbus.hpp): the control connection with its reconnect thread, and the ports.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

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

  mutable std::mutex mu;  // guards fd, topics, subscribers
  int fd = -1;
  std::atomic<bool> connected{false};
  std::atomic<bool> stopping{false};
  std::thread monitor;
  std::map<std::uint64_t, std::weak_ptr<TopicHandle>> topics;
  std::vector<std::weak_ptr<PortState>> subscribers;
  // Unsubscribes that could not be sent (no broker at the time): sent after the next reconnect, so that a
  // slot this process gave up does not stay active (and stall block-policy publishers) while it lives.
  std::vector<nlohmann::json> pending_unsubscribes;

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
  void sleep_or_wake(std::chrono::milliseconds d);
  Result<std::shared_ptr<TopicHandle>> open_topic(std::string_view name, TopicInfo* info);
  void watch();
};

struct PortState {
  std::shared_ptr<ClientCore> core;
  std::shared_ptr<TopicHandle> topic;
  std::string name;
  std::uint64_t topic_id = 0;
  std::uint64_t port = 0;
  std::uint64_t id = 0;   // publisher id: pid << 32 | port
  std::uint64_t seq = 0;  // publisher sequence
  // Subscriber.
  std::uint32_t slot = 0;
  std::uint32_t ring = 0;
  std::uint64_t last_dropped = 0;
  std::uint32_t spin = 0;
  bool subscribed = false;
  // Set (under core->mu) when a new broker refused to give the slot back: receive() then reports it.
  std::atomic<bool> lost{false};
  std::string lost_reason;
};

// A reply that names a resource must name the one asked for.
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
  for (auto it = pending_unsubscribes.begin(); it != pending_unsubscribes.end();) {
    auto r = control::call(fd, *it, 5000ms);
    if (!r && r.error().code() == Errc::closed) return r.error();
    it = pending_unsubscribes.erase(it);  // done, or refused (the slot is gone already)
  }
  std::vector<std::weak_ptr<PortState>> live;
  for (auto& w : subscribers) {
    auto p = w.lock();
    if (!p || !p->subscribed) continue;
    live.push_back(w);
    auto r = control::call(
        fd,
        {{"op", "reattach"}, {"name", p->name}, {"id", p->topic_id}, {"slot", p->slot}, {"port", p->port}},
        5000ms);
    if (!r && r.error().code() == Errc::closed) return r.error();
    Status echo = r ? check_echo(*r, "slot", p->slot, "reattach") : Status(r.error());
    if (echo) echo = check_echo(*r, "name", p->name, "reattach");
    if (echo) echo = check_echo(*r, "port", p->port, "reattach");
    if (!echo) {
      p->lost_reason = "the subscription to " + qname(p->name) +
                       " could not be taken back after the broker restarted: " + echo.error().message();
      p->lost.store(true);
    }
  }
  subscribers = std::move(live);
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

std::uint64_t realtime_ns() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000ULL + static_cast<std::uint64_t>(ts.tv_nsec);
}

Error topic_gone(const std::string& name);
Result<std::uint32_t> alloc_chunk(PortState& p, std::size_t size, std::chrono::nanoseconds timeout);
Status fill_and_send(PortState& p, TopicHandle*& loan_topic, std::uint32_t chunk, std::size_t size,
                     const Attributes& attrs, std::chrono::nanoseconds timeout);

}  // namespace detail

using detail::check_echo;
using detail::qname;

// ---- Sample / Delivery / Loan ----

Sample::Sample(Sample&& o) noexcept : topic_(o.topic_), chunk_(o.chunk_), missed_(o.missed_) {
  o.topic_ = nullptr;
}
Sample& Sample::operator=(Sample&& o) noexcept {
  if (this != &o) {
    reset();
    topic_ = o.topic_;
    chunk_ = o.chunk_;
    missed_ = o.missed_;
    o.topic_ = nullptr;
  }
  return *this;
}
Sample::~Sample() {
  reset();
}
void Sample::reset() noexcept {
  if (topic_ != nullptr) topic_->release(chunk_);
  topic_ = nullptr;
}
// A Sample (or the Delivery around it) that was released, acked, nacked or moved from holds no chunk:
// its accessors return empty values rather than read a chunk that may belong to someone else by now.
std::span<const std::byte> Sample::bytes() const {
  if (topic_ == nullptr) return {};
  const MessageHeader* h = topic_->header(chunk_);
  const std::size_t n = h->payload_size <= topic_->max_size() ? h->payload_size : topic_->max_size();
  return {topic_->payload(chunk_), n};
}
std::string_view Sample::text() const {
  auto b = bytes();
  return {reinterpret_cast<const char*>(b.data()), b.size()};
}
std::string Sample::topic() const {
  return topic_ != nullptr ? topic_->name() : std::string();
}
std::uint64_t Sample::seq() const {
  return topic_ != nullptr ? topic_->header(chunk_)->seq : 0;
}
std::uint64_t Sample::publisher() const {
  return topic_ != nullptr ? topic_->header(chunk_)->publisher : 0;
}
std::uint64_t Sample::timestamp_ns() const {
  return topic_ != nullptr ? topic_->header(chunk_)->timestamp_ns : 0;
}
std::optional<AttrValue> Sample::attr(std::string_view key) const {
  if (topic_ == nullptr) return std::nullopt;
  const MessageHeader* h = topic_->header(chunk_);
  return find_attr(topic_->attrs(chunk_), std::min(h->attrs_size, topic_->attrs_max()), key);
}
Attributes Sample::attrs() const {
  if (topic_ == nullptr) return {};
  const MessageHeader* h = topic_->header(chunk_);
  return decode_attrs(topic_->attrs(chunk_), std::min(h->attrs_size, topic_->attrs_max()));
}
bool Sample::redelivered() const {
  if (topic_ == nullptr) return false;
  return (topic_->pool().header(chunk_).flags.load(std::memory_order_relaxed) & kChunkRedelivered) != 0 ||
         (topic_->header(chunk_)->flags & kMsgRedelivered) != 0;
}

Delivery::~Delivery() {
  nack();
}

void Delivery::ack() noexcept {
  TopicHandle* t = sample_.topic_;
  if (t == nullptr) return;
  t->shared()->acked.fetch_add(1, std::memory_order_relaxed);  // relaxed: a statistic
  sample_.reset();
}

void Delivery::nack() noexcept {
  TopicHandle* t = sample_.topic_;
  if (t == nullptr) return;
  const std::uint32_t c = sample_.chunk_;
  sample_.topic_ = nullptr;
  t->shared()->nacked.fetch_add(1, std::memory_order_relaxed);
  t->pool().header(c).flags.fetch_or(kChunkRedelivered, std::memory_order_relaxed);  // published by the push
  t->header(c)->flags |= kMsgRedelivered;
  // Back to the queue for another consumer, at once: the queue's ring has a cell for every chunk, so this
  // never waits, even when producers filled the queue meanwhile (a lone consumer of a full queue must not
  // wait for itself). Should a damaged ring refuse it, the chunk stays ours and the broker redelivers it
  // when this process exits: nothing is lost.
  (void)t->requeue(c);
}

Loan::Loan(Loan&& o) noexcept : topic_(o.topic_), chunk_(o.chunk_), size_(o.size_) {
  o.topic_ = nullptr;
}
Loan& Loan::operator=(Loan&& o) noexcept {
  if (this != &o) {
    if (topic_ != nullptr) topic_->release(chunk_);
    topic_ = o.topic_;
    chunk_ = o.chunk_;
    size_ = o.size_;
    o.topic_ = nullptr;
  }
  return *this;
}
Loan::~Loan() {
  if (topic_ != nullptr) topic_->release(chunk_);
}
std::byte* Loan::data() const {
  return topic_ != nullptr ? topic_->payload(chunk_) : nullptr;
}
void Loan::resize(std::size_t n) {
  SHMBUS_ASSERT(n <= size_);
  size_ = n;
}

namespace detail {

Error topic_gone(const std::string& name) {
  return Error(
      Errc::not_found,
      "topic " + qname(name) + " was deleted (topic delete, or stop --purge): open it again once it exists");
}

Result<std::uint32_t> alloc_chunk(PortState& p, std::size_t size, std::chrono::nanoseconds timeout) {
  if (size > p.topic->max_size())
    return Error(Errc::too_large, "message of " + std::to_string(size) +
                                      " bytes exceeds the max size of topic " + qname(p.name) + " (" +
                                      std::to_string(p.topic->max_size()) + " bytes)");
  std::uint32_t c;
  if (p.topic->allocate(c, Deadline::after(timeout)) != TopicHandle::IoStatus::ok)
    return Error(Errc::timed_out, "topic " + qname(p.name) +
                                      ": no free chunk within the timeout (every chunk is queued or held)");
  return c;
}

// Writes the header and attributes of a held chunk and sends it. On success the chunk is given away
// (loan_topic set to null); on failure the caller still holds it.
Status fill_and_send(PortState& p, TopicHandle*& loan_topic, std::uint32_t chunk, std::size_t size,
                     const Attributes& attrs, std::chrono::nanoseconds timeout) {
  TopicHandle& t = *p.topic;
  if (loan_topic != &t)
    return Error(Errc::invalid_argument, "the loan belongs to another topic or was published already");
  if (t.deleted()) return topic_gone(p.name);
  MessageHeader* h = t.header(chunk);
  h->attrs_size = 0;
  if (!attrs.empty()) {
    std::string why;
    if (!encode_attrs(attrs, t.attrs(chunk), t.attrs_max(), &h->attrs_size, &why))
      return Error(Errc::too_large, "topic " + qname(p.name) + ": " + why);
  }
  h->seq = ++p.seq;
  h->publisher = p.id;
  h->timestamp_ns = realtime_ns();
  h->payload_size = static_cast<std::uint32_t>(size);
  h->flags = 0;
  h->missed_before = 0;
  const Deadline deadline = Deadline::after(timeout);
  if (t.kind() == TopicKind::queue) {
    if (t.push_queue(chunk, deadline) != TopicHandle::IoStatus::ok) {
      --p.seq;
      return Error(Errc::timed_out, "queue " + qname(p.name) + " stayed full for the whole timeout");
    }
    t.shared()->published.fetch_add(1, std::memory_order_relaxed);  // relaxed: a statistic
    loan_topic = nullptr;
    return {};
  }
  loan_topic = nullptr;  // publish_stream gives the chunk away in every case
  if (t.publish_stream(chunk, deadline) == TopicHandle::IoStatus::timed_out)
    return Error(Errc::timed_out,
                 "stream " + qname(p.name) + ": some subscribers stayed full and missed the message");
  return {};
}

}  // namespace detail

namespace detail {
// The copying publish of Publisher and Producer: loan, copy, publish.
template <typename Port>
Status publish_copy(Port& port, std::span<const std::byte> bytes, const Attributes& attrs,
                    std::chrono::nanoseconds timeout) {
  auto l = port.loan(bytes.size(), timeout);
  if (!l) return l.error();
  std::memcpy(l->data(), bytes.data(), bytes.size());
  return port.publish(std::move(l).value(), attrs, timeout);
}
}  // namespace detail

// ---- Publisher / Producer ----

Publisher::Publisher(Publisher&&) noexcept = default;
Publisher& Publisher::operator=(Publisher&&) noexcept = default;
Publisher::~Publisher() = default;
Result<Loan> Publisher::loan(std::size_t size, std::chrono::nanoseconds timeout) {
  auto c = detail::alloc_chunk(*p_, size, timeout);
  if (!c) return c.error();
  return Loan(p_->topic.get(), *c, size);
}
Status Publisher::publish(Loan&& loan, const Attributes& attrs, std::chrono::nanoseconds timeout) {
  return detail::fill_and_send(*p_, loan.topic_, loan.chunk_, loan.size_, attrs, timeout);
}
Status Publisher::publish(std::span<const std::byte> bytes, const Attributes& attrs,
                          std::chrono::nanoseconds timeout) {
  return detail::publish_copy(*this, bytes, attrs, timeout);
}
Status Publisher::publish(std::string_view text, const Attributes& attrs, std::chrono::nanoseconds timeout) {
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

Producer::Producer(Producer&&) noexcept = default;
Producer& Producer::operator=(Producer&&) noexcept = default;
Producer::~Producer() = default;
Result<Loan> Producer::loan(std::size_t size, std::chrono::nanoseconds timeout) {
  auto c = detail::alloc_chunk(*p_, size, timeout);
  if (!c) return c.error();
  return Loan(p_->topic.get(), *c, size);
}
Status Producer::publish(Loan&& loan, const Attributes& attrs, std::chrono::nanoseconds timeout) {
  return detail::fill_and_send(*p_, loan.topic_, loan.chunk_, loan.size_, attrs, timeout);
}
Status Producer::publish(std::span<const std::byte> bytes, const Attributes& attrs,
                         std::chrono::nanoseconds timeout) {
  return detail::publish_copy(*this, bytes, attrs, timeout);
}
Status Producer::publish(std::string_view text, const Attributes& attrs, std::chrono::nanoseconds timeout) {
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
  if (!p_ || !p_->subscribed) return;
  p_->subscribed = false;
  // Never reconnect (or autostart a broker) just to unsubscribe: without a broker, the request waits for
  // the next connection (reattach_locked), or for this process's exit, which frees the slot anyway.
  const nlohmann::json req = {
      {"op", "unsubscribe"}, {"name", p_->name}, {"slot", p_->slot}, {"port", p_->port}};
  auto r = p_->core->call(req, false);
  // (A timed-out request is still in the broker's queue on this connection: it runs when the broker does.)
  if (!r && (r.error().code() == Errc::unavailable || r.error().code() == Errc::closed)) {
    std::lock_guard<std::mutex> lock(p_->core->mu);
    p_->core->pending_unsubscribes.push_back(req);
  }
}

std::optional<Sample> Subscriber::try_receive() noexcept {
  detail::PortState& p = *p_;
  TopicHandle& t = *p.topic;
  std::uint32_t c;
  if (t.deleted() || t.pool().try_pop(p.ring, c) != RingStatus::ok) return std::nullopt;
  SubscriberSlot* s = t.slot(p.slot);
  s->delivered.fetch_add(1, std::memory_order_relaxed);  // relaxed: a statistic on the slot's own line
  const std::uint64_t dropped = s->dropped.load(std::memory_order_relaxed);
  const std::uint64_t missed = dropped - p.last_dropped + t.header(c)->missed_before;
  p.last_dropped = dropped;
  if (t.overflow() == Overflow::block) t.notify(TopicHandle::WaitOn::space);  // a publisher may wait for room
  return Sample(&t, c, missed);
}

Result<Sample> Subscriber::receive(std::chrono::nanoseconds timeout) {
  if (p_->topic->deleted()) return detail::topic_gone(p_->name);  // its messages went with it
  if (auto s = try_receive()) return std::move(*s);
  EventCount ec(&p_->topic->slot(p_->slot)->ec);
  std::optional<Sample> got;
  ec.await([&] { return (got = try_receive()).has_value(); }, timeout, p_->spin);
  if (got) return std::move(*got);
  if (p_->lost.load()) {
    std::lock_guard<std::mutex> lock(p_->core->mu);
    return Error(Errc::closed, p_->lost_reason);
  }
  return Error(Errc::timed_out, "no message on " + qname(p_->name) + " within the timeout");
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

std::optional<Delivery> Consumer::try_receive() noexcept {
  TopicHandle& t = *p_->topic;
  std::uint32_t c;
  if (t.deleted() || t.pool().try_pop(1, c) != RingStatus::ok) return std::nullopt;
  t.shared()->delivered.fetch_add(1, std::memory_order_relaxed);  // relaxed: a statistic
  t.notify(TopicHandle::WaitOn::space);                           // a producer may wait for room
  return Delivery(Sample(&t, c, 0));
}

Result<Delivery> Consumer::receive(std::chrono::nanoseconds timeout) {
  if (p_->topic->deleted()) return detail::topic_gone(p_->name);  // its messages went with it
  if (auto d = try_receive()) return std::move(*d);
  std::optional<Delivery> got;
  p_->topic->wait_for(
      TopicHandle::WaitOn::not_empty, [&] { return (got = try_receive()).has_value(); },
      Deadline::after(timeout));
  if (got) return std::move(*got);
  return Error(Errc::timed_out, "no message on " + qname(p_->name) + " within the timeout");
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
                                            std::shared_ptr<TopicHandle> t, const TopicInfo& info) {
  auto p = std::make_shared<detail::PortState>();
  p->core = core;
  p->topic = std::move(t);
  p->name = info.name;
  p->topic_id = info.id;
  // Unique in the process, not per Client: the broker tells a retried subscribe by (process, port).
  static std::atomic<std::uint64_t> next_port{1};
  p->port = next_port.fetch_add(1, std::memory_order_relaxed);
  // The pid the broker sees: unique across pid namespaces, unlike getpid() in a container.
  p->id = (static_cast<std::uint64_t>(core->identity.pid()) << 32) | (p->port & 0xffffffffu);
  return p;
}

Error wrong_kind(const std::string& name, TopicKind is, const char* use) {
  return Error(Errc::invalid_argument, "topic " + qname(name) + " is a " + to_string(is) + ": use a " + use);
}
}  // namespace

Result<Publisher> Client::publisher(std::string_view topic) {
  TopicInfo info;
  auto t = core_->open_topic(topic, &info);
  if (!t) return t.error();
  if ((*t)->kind() != TopicKind::stream) return wrong_kind(info.name, TopicKind::queue, "producer");
  return Publisher(new_port(core_, *t, info));
}

Result<Producer> Client::producer(std::string_view topic) {
  TopicInfo info;
  auto t = core_->open_topic(topic, &info);
  if (!t) return t.error();
  if ((*t)->kind() != TopicKind::queue) return wrong_kind(info.name, TopicKind::stream, "publisher");
  return Producer(new_port(core_, *t, info));
}

Result<Consumer> Client::consumer(std::string_view topic) {
  TopicInfo info;
  auto t = core_->open_topic(topic, &info);
  if (!t) return t.error();
  if ((*t)->kind() != TopicKind::queue) return wrong_kind(info.name, TopicKind::stream, "subscriber");
  return Consumer(new_port(core_, *t, info));
}

Result<Subscriber> Client::subscriber(std::string_view topic, const SubscriberOptions& options) {
  TopicInfo info;
  auto t = core_->open_topic(topic, &info);
  if (!t) return t.error();
  if ((*t)->kind() != TopicKind::stream) return wrong_kind(info.name, TopicKind::queue, "consumer");
  auto p = new_port(core_, *t, info);
  // Should the broker answer too late, it still grants the slot when it gets to the request: the undo
  // frees it again, so a timed-out subscribe leaves no slot behind that nobody reads.
  const nlohmann::json undo = {{"op", "unsubscribe"}, {"name", info.name}, {"port", p->port}};
  auto r = core_->call({{"op", "subscribe"}, {"name", info.name}, {"port", p->port}}, true, &undo);
  if (!r) return r.error();
  for (auto [key, want] :
       {std::pair<const char*, nlohmann::json>{"name", info.name}, {"port", p->port}, {"id", info.id}})
    if (auto st = check_echo(*r, key, want, "subscribe"); !st) return st.error();
  if (!(*r).contains("slot") || !(*r)["slot"].is_number_unsigned() ||
      (*r)["slot"].get<std::uint64_t>() >= (*t)->max_subscribers())
    return Error(Errc::protocol_error, "broker answered subscribe without a valid slot");
  p->slot = (*r)["slot"].get<std::uint32_t>();
  p->ring = (*t)->slot(p->slot)->ring;
  p->last_dropped = (*t)->slot(p->slot)->dropped.load(std::memory_order_relaxed);
  p->spin = options.spin;
  p->subscribed = true;
  {
    std::lock_guard<std::mutex> lock(core_->mu);
    core_->subscribers.push_back(p);
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
                        {"max_subscribers", o.max_subscribers}};
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
