// Streams driven directly: StreamPublisher and StreamSubscriber (the client halves, stream_port.hpp) and
// StreamSupervisor (the broker's half, stream_supervisor.hpp), played by the test itself. No broker runs.
//
//  - StreamTest: one process. Fan-out, drop-oldest and block, the statuses, slots, adopt().
//  - StreamProcessTest: a subscriber or a publisher in a fork()ed child, SIGKILLed; the parent is the
//    broker (reclaim + on_death + sweep) and the surviving ports.
//  - Stream*FaultTest: a child dies at a named fault point (armed with SHMBUS_FAULT=<point>:<n>, read by
//    fault::arm_from_env()), a client step or a broker step; the parent finishes as a new broker would.
//
// Rules (as in fault_test.cpp): the parent reclaims a child only after waitpid; a child's OwnerId is read
// right after fork (the child waits on a pipe until the parent says more, so it is alive then); every wait
// is bounded (a pipe read with a timeout, a bounded number of sweep rounds), and no test depends on how
// fast anything runs.
//
// Census. ChunkPool::census() calls a chunk whose owner word names a publisher *slot* (slot_owner(i),
// stream_layout.hpp) "held by a process that is not running": such chunks are in a publisher's cache,
// loaned, or out in connections. stream_census() below takes those out of the violations; pool_whole()
// (every chunk free, no violation at all) is what a stream must come back to once every port is gone.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "shmbus/attributes.hpp"
#include "shmbus/detail/stream_layout.hpp"
#include "shmbus/detail/stream_port.hpp"
#include "shmbus/detail/stream_supervisor.hpp"
#include "shmbus/fault.hpp"
#include "shmbus/topic.hpp"
#include "test_util.hpp"

namespace shmbus {
namespace {

using namespace std::chrono_literals;
using detail::Received;
using detail::SendStatus;
using detail::StreamPublisher;
using detail::StreamSubscriber;
using detail::StreamSupervisor;
using detail::StreamSweep;

constexpr std::size_t kInline = 8;   // travels in the submission slot
constexpr std::size_t kChunk = 300;  // travels in a chunk
static_assert(kChunk > detail::kStreamInlineRoom);

// Exit codes of children.
constexpr int kNeverFired = 40;   // the armed fault point was never reached (the workload is wrong)
constexpr int kParentGone = 41;   // the pipe from the parent closed
constexpr int kNotArmed = 42;     // SHMBUS_FAULT was not accepted (fault points compiled out?)
constexpr int kChildFailed = 43;  // a step of the child's workload failed (see the code's place)

std::string unique_domain() {
  static int n = 0;
  return "sd" + std::to_string(getpid()) + "x" + std::to_string(n++);
}

// depth 8, 2 publishers, 4 subscribers: 2 * (8 + 8) + 4 * 4 = 48 chunks.
TopicOptions stream_options(Overflow overflow = Overflow::drop_oldest) {
  TopicOptions o;
  o.kind = TopicKind::stream;
  o.depth = 8;
  o.max_size = 512;
  o.overflow = overflow;
  o.max_subscribers = 4;
  o.max_publishers = 2;
  o.attrs_max = 64;
  return o;
}

// ---- messages ------------------------------------------------------------------------------------------

// The payload of message `seq`: n bytes that differ from one message to the next.
std::string body(std::uint64_t seq, std::size_t n) {
  std::string s(n, '\0');
  for (std::size_t i = 0; i < n; ++i) s[i] = static_cast<char>((seq * 131 + i * 7 + 1) & 0xff);
  return s;
}

std::string encoded(AttrList a) {
  std::string s(encoded_attrs_size(a, nullptr), '\0');
  encode_attrs(a, reinterpret_cast<std::byte*>(s.data()));
  return s;
}

// The attributes message `seq` carries.
std::string attrs_of(std::uint64_t seq) {
  return encoded({{"seq", static_cast<std::int64_t>(seq)}, {"unit", "C"}});
}

SendStatus send(StreamPublisher& p, std::uint64_t seq, std::size_t n, const Deadline& d = Deadline::now()) {
  const std::string b = body(seq, n);
  return p.publish(reinterpret_cast<const std::byte*>(b.data()), b.size(),
                   {{"seq", static_cast<std::int64_t>(seq)}, {"unit", "C"}}, d);
}

// A received message, copied out.
struct Msg {
  bool ok = false;
  bool is_chunk = false;
  std::uint32_t chunk = 0;
  std::uint32_t conn = 0;
  std::uint64_t seq = 0;
  std::uint64_t missed = 0;
  std::uint64_t publisher = 0;
  std::string payload;
  std::string attrs;
};

// Take the next message; give its chunk back unless `release` is false.
Msg take(StreamSubscriber& s, bool release = true) {
  Received r;
  Msg m;
  if (!s.try_receive(r)) return m;
  m.ok = true;
  m.is_chunk = r.is_chunk;
  m.chunk = r.chunk;
  m.conn = r.conn;
  m.seq = r.seq;
  m.missed = r.missed;
  m.publisher = r.publisher;
  if (r.is_chunk) {
    const TopicHandle& t = s.topic();
    m.payload.assign(reinterpret_cast<const char*>(t.payload(r.chunk)), r.size);
    m.attrs.assign(reinterpret_cast<const char*>(t.attrs(r.chunk)), r.attrs_size);
    if (release) s.release(r.conn, r.chunk);
  } else {
    m.payload.assign(reinterpret_cast<const char*>(r.bytes), r.size);
    m.attrs.assign(reinterpret_cast<const char*>(r.bytes) + r.size, r.attrs_size);
  }
  return m;
}

// Whether `m` is message `seq` as sent by send(seq, n).
::testing::AssertionResult intact(const Msg& m, std::uint64_t seq, std::size_t n) {
  if (!m.ok) return ::testing::AssertionFailure() << "no message where message " << seq << " was expected";
  if (m.seq != seq)
    return ::testing::AssertionFailure() << "message " << m.seq << " where " << seq << " was expected";
  if (m.is_chunk != (n > detail::kStreamInlineRoom))
    return ::testing::AssertionFailure()
           << "message " << seq << " travelled " << (m.is_chunk ? "in a chunk" : "inline");
  if (m.payload != body(seq, n))
    return ::testing::AssertionFailure() << "message " << seq << ": payload of " << m.payload.size()
                                         << " bytes differs from the " << n << " sent";
  if (m.attrs != attrs_of(seq))
    return ::testing::AssertionFailure() << "message " << seq << ": attributes differ";
  const auto unit = find_attr(reinterpret_cast<const std::byte*>(m.attrs.data()), m.attrs.size(), "unit");
  if (!unit || unit->as_string() != "C")
    return ::testing::AssertionFailure() << "message " << seq << ": attribute \"unit\" not found";
  return ::testing::AssertionSuccess();
}

// ---- the census ----------------------------------------------------------------------------------------

struct StreamCensus {
  std::uint32_t free = 0;
  std::uint32_t slot_owned = 0;     // a publisher slot's: cached, loaned or out in connections
  std::uint32_t process_owned = 0;  // held by a live process (a broker's step)
  std::vector<std::string> violations;
  std::string text() const {
    std::string s = "free=" + std::to_string(free) + " slot_owned=" + std::to_string(slot_owned) +
                    " process_owned=" + std::to_string(process_owned);
    for (std::size_t i = 0; i < violations.size() && i < 10; ++i) s += "\n  " + violations[i];
    return s;
  }
};

StreamCensus stream_census(const TopicHandle& t) {
  const ChunkPool& pool = t.pool();
  const PoolCensus c = pool.census();
  StreamCensus s;
  s.free = static_cast<std::uint32_t>(c.free);
  s.process_owned = static_cast<std::uint32_t>(c.owned);
  if (c.queued != 0) s.violations.push_back(std::to_string(c.queued) + " chunk(s) in message rings");
  for (std::uint32_t i = 0; i < pool.chunk_count(); ++i)
    if (detail::is_slot_owner(pool.header(i).owner.load())) ++s.slot_owned;
  for (const std::string& v : c.violations) {
    unsigned idx = 0;
    if (std::sscanf(v.c_str(), "chunk %u is held by pid", &idx) == 1 &&
        v.find(" is held by pid ") != std::string::npos && idx < pool.chunk_count() &&
        detail::is_slot_owner(pool.header(idx).owner.load()))
      continue;  // a slot's chunk: not a process
    s.violations.push_back(v);
  }
  if (s.free + s.slot_owned + s.process_owned != pool.chunk_count())
    s.violations.push_back(
        "free + slot-owned + process-owned = " + std::to_string(s.free + s.slot_owned + s.process_owned) +
        ", not the pool's " + std::to_string(pool.chunk_count()));
  return s;
}

// Every chunk in exactly one place (a slot's chunks counted as a place).
::testing::AssertionResult consistent(const TopicHandle& t) {
  const StreamCensus c = stream_census(t);
  if (!c.violations.empty()) return ::testing::AssertionFailure() << c.text();
  return ::testing::AssertionSuccess();
}

// Every chunk free, no violation: what a stream comes back to once its publishers are gone.
::testing::AssertionResult pool_whole(const TopicHandle& t) {
  const PoolCensus c = t.pool().census();
  if (c.violations.empty() && c.free == t.pool().chunk_count()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "not every chunk is free: " << stream_census(t).text();
}

// ---- the topic, the broker's calls -----------------------------------------------------------------------

struct Stream {
  std::string domain = unique_domain();
  std::uint64_t id = 1;
  TopicHandle broker;  // the supervisor's handle

  explicit Stream(const TopicOptions& o = stream_options()) {
    auto h = TopicHandle::create(domain, id, "s.t", o);
    EXPECT_TRUE(h) << h.error().message();
    if (h) broker = std::move(h).value();
  }
  ~Stream() { (void)TopicHandle::remove(domain, id); }

  StreamSupervisor sup() { return StreamSupervisor(broker); }
  std::shared_ptr<TopicHandle> open() const {
    auto h = TopicHandle::open(domain, id);
    if (!h) return nullptr;
    return std::make_shared<TopicHandle>(std::move(h).value());
  }
  std::uint32_t chunks() const { return broker.pool().chunk_count(); }
  const StreamView& view() const { return broker.stream(); }

  std::uint32_t add_publisher(std::uint64_t port, OwnerId owner = OwnerId::self()) {
    auto s = sup().attach_publisher(owner, port, 1000 + port);
    EXPECT_TRUE(s) << s.error().message();
    return s ? *s : ~0u;
  }
  std::uint32_t add_subscriber(std::uint64_t port, OwnerId owner = OwnerId::self()) {
    auto s = sup().attach_subscriber(owner, port);
    EXPECT_TRUE(s) << s.error().message();
    return s ? *s : ~0u;
  }
  std::unique_ptr<StreamPublisher> publisher(std::uint64_t port) {
    const std::uint32_t slot = add_publisher(port);
    auto p = StreamPublisher::attach(open(), slot, false);
    EXPECT_TRUE(p) << p.error().message();
    return p ? std::move(p).value() : nullptr;
  }
  std::unique_ptr<StreamSubscriber> subscriber(std::uint64_t port) {
    const std::uint32_t slot = add_subscriber(port);
    auto s = StreamSubscriber::attach(open(), slot);
    EXPECT_TRUE(s) << s.error().message();
    return s ? std::move(s).value() : nullptr;
  }

  std::uint32_t pub_state(std::uint32_t i) const { return view().pubs[i].state.load(); }
  std::uint32_t sub_state(std::uint32_t j) const { return view().subs[j].state.load(); }
  // Chunks whose owner word names publisher slot i.
  std::uint32_t slot_owned(std::uint32_t i) const {
    std::uint32_t n = 0;
    for (std::uint32_t c = 0; c < chunks(); ++c)
      n += broker.pool().header(c).owner.load() == detail::slot_owner(i).value ? 1 : 0;
    return n;
  }
  bool held_bit(std::uint32_t sub, std::uint32_t chunk) const {
    return (view().held_of(sub)[chunk / 64].load() >> (chunk % 64)) & 1;
  }
  std::uint32_t live_conns() const {
    std::uint32_t n = 0;
    for (std::uint32_t k = 0; k < view().conn_capacity; ++k)
      n += view().conn(k)->state.load() != detail::kConnFree ? 1 : 0;
    return n;
  }
};

// The broker's loop: sweep, then let the ports do `step`, until `done` holds after a sweep, at most `rounds`
// times. Returns whether `done` held.
bool settle(StreamSupervisor sup, const std::function<void()>& step,
            const std::function<bool(const StreamSweep&)>& done, int rounds = 5000) {
  for (int i = 0; i < rounds; ++i) {
    const StreamSweep s = sup.sweep();
    if (done(s)) return true;
    step();
  }
  return false;
}

// Take and give back everything `s` has now; returns how many it took.
int drain(StreamSubscriber& s) {
  int n = 0;
  while (take(s).ok) ++n;
  return n;
}

// Every chunk the publisher can loan now (its cache, what comes back through its completions, the pool).
std::vector<std::uint32_t> loan_all(StreamPublisher& p, std::uint32_t limit) {
  std::vector<std::uint32_t> v;
  std::uint32_t c = 0;
  while (v.size() <= limit && p.loan(c, Deadline::now()) == SendStatus::ok) v.push_back(c);
  return v;
}
void unloan_all(StreamPublisher& p, const std::vector<std::uint32_t>& v) {
  for (std::uint32_t c : v) p.unloan(c);
}

// ---- children ------------------------------------------------------------------------------------------

// A fork()ed child that talks with the parent over two pipes, one 64-bit word at a time.
class Child {
 public:
  explicit Child(const std::function<int(Child&)>& body) {
    ::signal(SIGPIPE, SIG_IGN);  // a write to a dead child's pipe fails instead of killing the test
    if (::pipe2(down_, O_CLOEXEC) != 0 || ::pipe2(up_, O_CLOEXEC) != 0) return;
    pid_ = test::fork_child([&] {
      ::close(down_[1]);
      ::close(up_[0]);
      return body(*this);
    });
    ::close(down_[0]);
    ::close(up_[1]);
    down_[0] = up_[1] = -1;
    if (pid_ > 0) owner_ = OwnerId::of(pid_).value_or(OwnerId{});  // alive: it waits for our first word
  }
  ~Child() {
    if (pid_ > 0 && !reaped_) (void)kill();
    for (int fd : {down_[1], up_[0]})
      if (fd >= 0) ::close(fd);
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  pid_t pid() const { return pid_; }
  OwnerId owner() const { return owner_; }

  // ---- parent side ----
  bool send(std::uint64_t v) { return ::write(down_[1], &v, sizeof v) == sizeof v; }
  // The child's next word, or nullopt if none came within `timeout` (or the child is gone).
  std::optional<std::uint64_t> recv(std::chrono::milliseconds timeout = 20s) {
    pollfd p{up_[0], POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(timeout.count())) != 1) return std::nullopt;
    std::uint64_t v = 0;
    if (::read(up_[0], &v, sizeof v) != sizeof v) return std::nullopt;
    return v;
  }
  test::ChildExit kill() {
    ::kill(pid_, SIGKILL);
    return wait(20s);
  }
  test::ChildExit wait(std::chrono::milliseconds timeout = 20s) {
    reaped_ = true;
    return test::wait_child(pid_, timeout);
  }

  // ---- child side ----
  std::uint64_t get() {
    std::uint64_t v = 0;
    if (::read(down_[0], &v, sizeof v) != sizeof v) _exit(kParentGone);
    return v;
  }
  void put(std::uint64_t v) {
    if (::write(up_[1], &v, sizeof v) != sizeof v) _exit(kParentGone);
  }
  // Arm the fault point as a process started with SHMBUS_FAULT=<point>:<n> is.
  static bool arm(const std::string& point, int nth) {
    const std::string v = point + ":" + std::to_string(nth);
    ::setenv("SHMBUS_FAULT", v.c_str(), 1);
    return fault::arm_from_env();
  }

 private:
  int down_[2] = {-1, -1};  // parent -> child
  int up_[2] = {-1, -1};    // child -> parent
  pid_t pid_ = -1;
  OwnerId owner_{};
  bool reaped_ = false;
};

std::string exit_text(const test::ChildExit& e) {
  if (e.timed_out) return "still running at the timeout (killed): wedged?";
  if (e.exited) {
    switch (e.code) {
      case kNeverFired:
        return "exit 40 (the fault point was never reached)";
      case kParentGone:
        return "exit 41 (the parent's pipe closed)";
      case kNotArmed:
        return "exit 42 (SHMBUS_FAULT not accepted: fault points compiled out?)";
      default:
        return "exit " + std::to_string(e.code);
    }
  }
  return "killed by signal " + std::to_string(e.signal) + " (" + strsignal(e.signal) + ")";
}

bool killed(const test::ChildExit& e) {
  return !e.timed_out && !e.exited && e.signal == SIGKILL;
}

// The new broker's part after a process died: what reclaim_dead() does (broker.cpp).
void bury(Stream& s, OwnerId dead) {
  (void)s.broker.reclaim(dead);
  (void)s.sup().on_death(dead);
}

// =============================================================================================== in-process

TEST(StreamTest, FanOutDeliversEveryMessageInOrderWithItsBytesAndAttributesToEverySubscriber) {
  Stream s;
  std::unique_ptr<StreamSubscriber> subs[3] = {s.subscriber(1), s.subscriber(2), s.subscriber(3)};
  auto pub = s.publisher(10);
  ASSERT_TRUE(pub && subs[0] && subs[1] && subs[2]);
  std::uint64_t seq = 0;
  // Five rounds of a ring's worth: the rings wrap and chunks come back and go out again.
  for (int round = 0; round < 5; ++round) {
    const std::uint64_t first = seq + 1;
    for (std::uint64_t i = 0; i < s.broker.depth(); ++i) {
      ++seq;
      ASSERT_EQ(send(*pub, seq, seq % 2 ? kInline : kChunk), SendStatus::ok) << "message " << seq;
    }
    for (auto& sub : subs) {
      for (std::uint64_t q = first; q <= seq; ++q) {
        const Msg m = take(*sub);
        ASSERT_TRUE(intact(m, q, q % 2 ? kInline : kChunk)) << "subscriber " << sub->slot();
        EXPECT_EQ(m.missed, 0u);
        EXPECT_EQ(m.publisher, pub->id());
      }
      EXPECT_FALSE(take(*sub).ok) << "subscriber " << sub->slot() << " got more than was sent";
    }
  }
  EXPECT_TRUE(consistent(s.broker));
  EXPECT_EQ(s.sup().delivered_total(), 3 * seq);
  EXPECT_EQ(s.sup().published_total(), seq);
  EXPECT_EQ(s.sup().dropped_total(), 0u);
}

TEST(StreamTest, ChunkMessageFannedOutToThreeSubscribersUsesOneChunk) {
  Stream s;
  std::unique_ptr<StreamSubscriber> subs[3] = {s.subscriber(1), s.subscriber(2), s.subscriber(3)};
  auto pub = s.publisher(10);
  ASSERT_TRUE(pub && subs[0] && subs[1] && subs[2]);
  const std::uint32_t ps = pub->slot();
  ASSERT_EQ(s.slot_owned(ps), 0u);
  ASSERT_EQ(send(*pub, 1, kChunk), SendStatus::ok);
  EXPECT_EQ(s.slot_owned(ps), 1u) << "one chunk for three subscribers";
  Msg m[3];
  for (int i = 0; i < 3; ++i) {
    m[i] = take(*subs[i], false);
    ASSERT_TRUE(intact(m[i], 1, kChunk));
    EXPECT_EQ(m[i].chunk, m[0].chunk) << "every subscriber reads the same chunk";
    EXPECT_TRUE(s.held_bit(subs[i]->slot(), m[i].chunk));
  }
  const std::uint32_t x = m[0].chunk;
  EXPECT_EQ(s.slot_owned(ps), 1u);
  const StreamCensus c = stream_census(s.broker);
  EXPECT_TRUE(c.violations.empty()) << c.text();
  EXPECT_EQ(c.free, s.chunks() - 1) << c.text();
  EXPECT_EQ(c.slot_owned, 1u) << c.text();

  // Two of three give it back: it is still out, so the next message takes another chunk.
  subs[0]->release(m[0].conn, x);
  subs[1]->release(m[1].conn, x);
  EXPECT_FALSE(s.held_bit(subs[0]->slot(), x));
  ASSERT_EQ(send(*pub, 2, kChunk), SendStatus::ok);
  Msg m2[3];
  for (int i = 0; i < 3; ++i) {
    m2[i] = take(*subs[i]);
    ASSERT_TRUE(intact(m2[i], 2, kChunk));
  }
  EXPECT_NE(m2[0].chunk, x);
  EXPECT_EQ(s.slot_owned(ps), 2u);
  // The third gives it back: both chunks are the publisher's again, and the next message uses one of them.
  subs[2]->release(m[2].conn, x);
  ASSERT_EQ(send(*pub, 3, kChunk), SendStatus::ok);
  for (auto& sub : subs) {
    const Msg m3 = take(*sub);
    ASSERT_TRUE(intact(m3, 3, kChunk));
    EXPECT_TRUE(m3.chunk == x || m3.chunk == m2[0].chunk) << "chunk " << m3.chunk;
  }
  EXPECT_EQ(s.slot_owned(ps), 2u);
  EXPECT_TRUE(consistent(s.broker));
}

TEST(StreamTest, DropOldestOverwritesTheOldestInlineSlotAndTheNextMessageCountsWhatWasLost) {
  Stream s(stream_options(Overflow::drop_oldest));
  auto sub = s.subscriber(1);
  auto pub = s.publisher(10);
  ASSERT_TRUE(sub && pub);
  const std::uint64_t depth = s.broker.depth();
  for (std::uint64_t seq = 1; seq <= depth + 3; ++seq)
    ASSERT_EQ(send(*pub, seq, kInline), SendStatus::ok) << "message " << seq << ": the new message goes out";
  Msg m = take(*sub);
  ASSERT_TRUE(intact(m, 4, kInline)) << "1 to 3 were overwritten";
  EXPECT_EQ(m.missed, 3u);
  for (std::uint64_t seq = 5; seq <= depth + 3; ++seq) {
    m = take(*sub);
    ASSERT_TRUE(intact(m, seq, kInline));
    EXPECT_EQ(m.missed, 0u);
  }
  EXPECT_FALSE(take(*sub).ok);
  EXPECT_EQ(s.sup().dropped_total(), 3u);
}

TEST(StreamTest, DropOldestDropsTheNewMessageRatherThanOverwriteASlotThatNamesAChunk) {
  Stream s(stream_options(Overflow::drop_oldest));
  auto sub = s.subscriber(1);
  auto pub = s.publisher(10);
  ASSERT_TRUE(sub && pub);
  const std::uint64_t depth = s.broker.depth();
  for (std::uint64_t seq = 1; seq <= depth; ++seq) ASSERT_EQ(send(*pub, seq, kChunk), SendStatus::ok);
  EXPECT_EQ(send(*pub, depth + 1, kInline), SendStatus::some_missed);
  EXPECT_EQ(send(*pub, depth + 2, kChunk), SendStatus::some_missed);
  for (std::uint64_t seq = 1; seq <= depth; ++seq) {
    const Msg m = take(*sub);
    ASSERT_TRUE(intact(m, seq, kChunk)) << "a chunk message was overwritten";
    EXPECT_EQ(m.missed, 0u);
  }
  EXPECT_FALSE(take(*sub).ok);
  ASSERT_EQ(send(*pub, depth + 3, kInline), SendStatus::ok);
  const Msg m = take(*sub);
  ASSERT_TRUE(intact(m, depth + 3, kInline));
  EXPECT_EQ(m.missed, 2u);
  EXPECT_TRUE(consistent(s.broker));
}

TEST(StreamTest, BlockWithAZeroOrShortDeadlineReportsSomeMissedAndOverwritesNothing) {
  Stream s(stream_options(Overflow::block));
  auto sub = s.subscriber(1);
  auto pub = s.publisher(10);
  ASSERT_TRUE(sub && pub);
  const std::uint64_t depth = s.broker.depth();
  for (std::uint64_t seq = 1; seq <= depth; ++seq) ASSERT_EQ(send(*pub, seq, kInline), SendStatus::ok);
  EXPECT_EQ(send(*pub, depth + 1, kInline, Deadline::now()), SendStatus::some_missed);
  EXPECT_EQ(send(*pub, depth + 2, kInline, Deadline::after(2ms)), SendStatus::some_missed);
  EXPECT_EQ(send(*pub, depth + 3, kChunk, Deadline::now()), SendStatus::some_missed);
  for (std::uint64_t seq = 1; seq <= depth; ++seq) {
    const Msg m = take(*sub);
    ASSERT_TRUE(intact(m, seq, kInline)) << "a queued message was overwritten";
    EXPECT_EQ(m.missed, 0u);
  }
  EXPECT_FALSE(take(*sub).ok);
  ASSERT_EQ(send(*pub, depth + 4, kChunk), SendStatus::ok);
  const Msg m = take(*sub);
  ASSERT_TRUE(intact(m, depth + 4, kChunk));
  EXPECT_EQ(m.missed, 3u);
  EXPECT_TRUE(consistent(s.broker));
}

TEST(StreamTest, BlockWaitsForTheSubscriberToMakeRoom) {
  Stream s(stream_options(Overflow::block));
  auto sub = s.subscriber(1);
  auto pub = s.publisher(10);
  ASSERT_TRUE(sub && pub);
  const std::uint64_t depth = s.broker.depth();
  for (std::uint64_t seq = 1; seq <= depth; ++seq) ASSERT_EQ(send(*pub, seq, kInline), SendStatus::ok);
  Msg first;
  std::thread reader([&] {
    const auto end = std::chrono::steady_clock::now() + 30s;
    while (!first.ok && std::chrono::steady_clock::now() < end) first = take(*sub);
  });
  const SendStatus st = send(*pub, depth + 1, kChunk, Deadline::after(30s));
  reader.join();
  EXPECT_EQ(st, SendStatus::ok);
  EXPECT_TRUE(intact(first, 1, kInline));
  for (std::uint64_t seq = 2; seq <= depth + 1; ++seq) {
    const Msg m = take(*sub);
    ASSERT_TRUE(intact(m, seq, seq <= depth ? kInline : kChunk));
    EXPECT_EQ(m.missed, 0u);
  }
}

TEST(StreamTest, NoSubscribersIsReportedAndUsesTheSequenceNumber) {
  Stream s;
  auto pub = s.publisher(10);
  ASSERT_TRUE(pub);
  EXPECT_EQ(send(*pub, 1, kInline), SendStatus::no_subscribers);
  EXPECT_EQ(send(*pub, 2, kChunk), SendStatus::no_subscribers);
  EXPECT_EQ(pub->last_seq(), 2u);
  auto sub = s.subscriber(1);
  ASSERT_TRUE(sub);
  ASSERT_EQ(send(*pub, 3, kChunk), SendStatus::ok);
  const Msg m = take(*sub);
  ASSERT_TRUE(intact(m, 3, kChunk));
  EXPECT_EQ(m.missed, 0u) << "it subscribed after 1 and 2: it missed nothing";
  EXPECT_TRUE(consistent(s.broker));
}

TEST(StreamTest, TooLargePayloadOrAttributesSendNothing) {
  Stream s;
  auto sub = s.subscriber(1);
  auto pub = s.publisher(10);
  ASSERT_TRUE(sub && pub);
  const std::string big(s.broker.max_size() + 1, 'x');
  EXPECT_EQ(pub->publish(reinterpret_cast<const std::byte*>(big.data()), big.size(), {}, Deadline::now()),
            SendStatus::too_large);
  const std::string long_value(s.broker.attrs_max(), 'v');  // encodes to more than attrs_max
  const std::string small = "abc";
  EXPECT_EQ(pub->publish(reinterpret_cast<const std::byte*>(small.data()), small.size(), {{"k", long_value}},
                         Deadline::now()),
            SendStatus::too_large);
  EXPECT_EQ(pub->publish(reinterpret_cast<const std::byte*>(small.data()), small.size(), {{"", 1}},
                         Deadline::now()),
            SendStatus::too_large)
      << "an empty key cannot be encoded";
  std::uint32_t c = 0;
  ASSERT_EQ(pub->loan(c, Deadline::now()), SendStatus::ok);
  EXPECT_EQ(pub->publish_chunk(c, s.broker.max_size() + 1, {}, Deadline::now()), SendStatus::too_large);
  EXPECT_EQ(pub->last_seq(), 0u) << "nothing was sent";
  EXPECT_FALSE(take(*sub).ok);
  ASSERT_EQ(send(*pub, 1, kChunk), SendStatus::ok);
  const Msg m = take(*sub);
  ASSERT_TRUE(intact(m, 1, kChunk));
  EXPECT_EQ(m.missed, 0u);
  // The refused loan went back to the publisher: it can loan every chunk.
  const auto all = loan_all(*pub, s.chunks());
  EXPECT_EQ(all.size(), s.chunks());
  unloan_all(*pub, all);
}

TEST(StreamTest, ExhaustedSlotsFailWithAClearError) {
  Stream s;
  std::set<std::uint32_t> slots;
  for (std::uint64_t port = 1; port <= 4; ++port) slots.insert(s.add_subscriber(port));
  EXPECT_EQ(slots.size(), 4u);
  auto full = s.sup().attach_subscriber(OwnerId::self(), 5);
  ASSERT_FALSE(full);
  EXPECT_EQ(full.error().code(), Errc::no_space);
  EXPECT_NE(full.error().message().find("subscriber slots taken"), std::string::npos)
      << full.error().message();
  EXPECT_NE(full.error().message().find("max_subscribers"), std::string::npos) << full.error().message();
  EXPECT_NE(full.error().message().find("s.t"), std::string::npos) << "names the topic";
  EXPECT_EQ(s.broker.active_subscribers(), 4u);

  s.add_publisher(1);
  s.add_publisher(2);
  auto pfull = s.sup().attach_publisher(OwnerId::self(), 3, 7);
  ASSERT_FALSE(pfull);
  EXPECT_EQ(pfull.error().code(), Errc::no_space);
  EXPECT_NE(pfull.error().message().find("publisher slots taken"), std::string::npos)
      << pfull.error().message();
  EXPECT_EQ(s.broker.active_publishers(), 2u);
  EXPECT_EQ(s.live_conns(), 8u);
}

TEST(StreamTest, AttachOfTheSameOwnerAndPortTwiceIsIdempotent) {
  Stream s;
  const std::uint32_t a = s.add_subscriber(7);
  const std::uint32_t p = s.add_publisher(9);
  const std::uint64_t gen = s.view().generation->load();
  EXPECT_EQ(s.add_subscriber(7), a);
  EXPECT_EQ(s.add_publisher(9), p);
  EXPECT_EQ(s.view().generation->load(), gen) << "a retried request changes nothing";
  EXPECT_EQ(s.broker.active_subscribers(), 1u);
  EXPECT_EQ(s.broker.active_publishers(), 1u);
  EXPECT_EQ(s.live_conns(), 1u);
  // Another port of the same process, or the same port of another process, is another slot.
  EXPECT_NE(s.add_subscriber(8), a);
  EXPECT_NE(s.add_subscriber(7, OwnerId::make(999991, 1)), a);
  EXPECT_EQ(s.broker.active_subscribers(), 3u);
}

// A subscriber that unsubscribed holding a chunk and leaving chunk messages unread: the broker gives
// them back on its behalf, the publisher gets every chunk back, the slot is free.
TEST(StreamTest, UnsubscribedSubscribersChunksGoBackToThePublisher) {
  Stream s;
  auto a = s.subscriber(1);
  auto b = s.subscriber(2);
  auto pub = s.publisher(10);
  ASSERT_TRUE(a && b && pub);
  for (std::uint64_t seq = 1; seq <= 4; ++seq) ASSERT_EQ(send(*pub, seq, kChunk), SendStatus::ok);
  ASSERT_TRUE(intact(take(*b), 1, kChunk));
  ASSERT_TRUE(intact(take(*b, false), 2, kChunk));  // held
  const std::uint32_t bs = b->slot();
  b.reset();
  s.sup().close_subscriber(bs, true);
  std::uint64_t seq = 4;
  ASSERT_TRUE(settle(
      s.sup(),
      [&] {
        ASSERT_NE(send(*pub, ++seq, kInline), SendStatus::closed);
        drain(*a);
      },
      [&](const StreamSweep& sw) { return !sw.pending && s.sub_state(bs) == kSlotFree; }))
      << "the closing connection never finished";
  drain(*a);
  const auto all = loan_all(*pub, s.chunks());
  EXPECT_EQ(all.size(), s.chunks());
  unloan_all(*pub, all);
  EXPECT_TRUE(consistent(s.broker));
}

// A publisher that left: what it sent is still read, a chunk a subscriber holds stays until given back,
// then the slot and every chunk are free.
TEST(StreamTest, RetiredPublishersChunksAreFreedOnceNoSubscriberHoldsThem) {
  Stream s;
  auto a = s.subscriber(1);
  auto pub = s.publisher(10);
  ASSERT_TRUE(a && pub);
  for (std::uint64_t seq = 1; seq <= 4; ++seq) ASSERT_EQ(send(*pub, seq, kChunk), SendStatus::ok);
  const std::uint32_t ps = pub->slot();
  const Msg held = take(*a, false);
  ASSERT_TRUE(intact(held, 1, kChunk));
  pub.reset();
  s.sup().retire_publisher(ps);
  for (std::uint64_t seq = 2; seq <= 4; ++seq) ASSERT_TRUE(intact(take(*a), seq, kChunk)) << "orphan drain";
  EXPECT_FALSE(take(*a).ok);
  for (int i = 0; i < 5; ++i) {
    (void)s.sup().sweep();
    (void)take(*a);
  }
  EXPECT_EQ(s.pub_state(ps), detail::kPubRetired) << "a chunk of it is still held";
  EXPECT_EQ(s.broker.pool().header(held.chunk).owner.load(), detail::slot_owner(ps).value);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(s.broker.payload(held.chunk)), kChunk), body(1, kChunk))
      << "a held chunk was reused";
  a->release(held.conn, held.chunk);
  ASSERT_TRUE(settle(
      s.sup(), [&] { (void)take(*a); }, [](const StreamSweep& sw) { return !sw.pending; }));
  EXPECT_EQ(s.pub_state(ps), detail::kPubFree);
  EXPECT_TRUE(pool_whole(s.broker));
}

// Tables and connection states as a snapshot, to compare before and after adopt().
std::vector<std::uint64_t> tables(const Stream& s) {
  const StreamView& v = s.view();
  std::vector<std::uint64_t> t;
  for (std::uint64_t x = 0; x < std::uint64_t{v.max_publishers} * v.max_subscribers; ++x) {
    t.push_back(v.pub_conn[x].load());
    t.push_back(v.sub_conn[x].load());
  }
  for (std::uint32_t k = 0; k < v.conn_capacity; ++k) t.push_back(v.conn(k)->state.load());
  for (std::uint32_t i = 0; i < v.max_publishers; ++i) t.push_back(v.pubs[i].state.load());
  for (std::uint32_t j = 0; j < v.max_subscribers; ++j) t.push_back(v.subs[j].state.load());
  return t;
}

TEST(StreamTest, AdoptByANewSupervisorChangesNothingAndTrafficFlows) {
  Stream s;
  auto a = s.subscriber(1);
  auto b = s.subscriber(2);
  auto pub = s.publisher(10);
  ASSERT_TRUE(a && b && pub);
  for (std::uint64_t seq = 1; seq <= 3; ++seq) ASSERT_EQ(send(*pub, seq, kChunk), SendStatus::ok);
  for (std::uint64_t seq = 1; seq <= 3; ++seq) ASSERT_TRUE(intact(take(*a), seq, kChunk));
  ASSERT_TRUE(intact(take(*b, false), 1, kChunk));
  const std::uint32_t bs = b->slot();
  b.reset();
  s.sup().close_subscriber(bs, true);  // b's connection closing, not finished
  const auto before = tables(s);
  const std::uint64_t gen = s.view().generation->load();
  {
    auto fresh = s.open();  // a new broker's handle
    ASSERT_TRUE(fresh);
    StreamSupervisor next(*fresh);
    EXPECT_EQ(next.adopt(), 0u);
    EXPECT_EQ(next.adopt(), 0u);
  }
  EXPECT_EQ(tables(s), before);
  EXPECT_EQ(s.view().generation->load(), gen + 2) << "each adopt() bumps once";
  std::uint64_t seq = 3;
  ASSERT_TRUE(settle(
      s.sup(),
      [&] {
        ++seq;
        ASSERT_EQ(send(*pub, seq, seq % 2 ? kInline : kChunk), SendStatus::ok);
        const Msg m = take(*a);
        ASSERT_TRUE(intact(m, seq, seq % 2 ? kInline : kChunk));
        ASSERT_EQ(m.missed, 0u);
      },
      [&](const StreamSweep& sw) { return !sw.pending && s.sub_state(bs) == kSlotFree; }));
  const auto all = loan_all(*pub, s.chunks());
  EXPECT_EQ(all.size(), s.chunks());
  unloan_all(*pub, all);
}

// A broker killed between a connection's state and the tables: adopt() rebuilds the entry.
TEST(StreamTest, AdoptRebuildsATableEntryTheConnectionsDisagreeWith) {
  Stream s;
  auto a = s.subscriber(1);
  auto pub = s.publisher(10);
  ASSERT_TRUE(a && pub);
  ASSERT_EQ(send(*pub, 1, kInline), SendStatus::ok);
  ASSERT_TRUE(intact(take(*a), 1, kInline));
  const auto before = tables(s);
  s.view().pub_conn_at(pub->slot(), a->slot()).store(detail::kNoConn);
  EXPECT_GE(s.sup().adopt(), 1u);
  EXPECT_EQ(tables(s), before);
  EXPECT_EQ(s.sup().adopt(), 0u);
  for (std::uint64_t seq = 2; seq <= 20; ++seq) {
    ASSERT_EQ(send(*pub, seq, kChunk), SendStatus::ok);
    const Msg m = take(*a);
    ASSERT_TRUE(intact(m, seq, kChunk));
    EXPECT_EQ(m.missed, 0u);
  }
}

// Each of the broker's operations leaves the tables as adopt() would rebuild them: a new broker adopting
// at any point between two operations changes nothing, and traffic flows on.
TEST(StreamTest, AdoptAfterEverySupervisorOperationIsANoOp) {
  Stream s;
  auto fresh = s.open();  // the next broker's handle
  ASSERT_TRUE(fresh);
  auto adopt_changes_nothing = [&](const char* after) {
    const auto before = tables(s);
    EXPECT_EQ(StreamSupervisor(*fresh).adopt(), 0u) << "after " << after;
    EXPECT_EQ(tables(s), before) << "after " << after;
  };
  auto a = s.subscriber(1);
  adopt_changes_nothing("attach_subscriber");
  auto pub = s.publisher(10);
  adopt_changes_nothing("attach_publisher");
  auto b = s.subscriber(2);
  adopt_changes_nothing("a second attach_subscriber");
  ASSERT_TRUE(a && b && pub);
  std::uint64_t seq = 0;
  for (; seq < 3; ++seq) ASSERT_EQ(send(*pub, seq + 1, kChunk), SendStatus::ok);
  ASSERT_TRUE(intact(take(*b, false), 1, kChunk));
  const std::uint32_t bs = b->slot();
  b.reset();
  s.sup().close_subscriber(bs, true);
  adopt_changes_nothing("close_subscriber");
  ASSERT_TRUE(settle(
      s.sup(),
      [&] {
        ++seq;
        ASSERT_EQ(send(*pub, seq, kChunk), SendStatus::ok);
        adopt_changes_nothing("sweep");
      },
      [&](const StreamSweep& sw) { return !sw.pending && s.sub_state(bs) == kSlotFree; }));
  for (std::uint64_t q = 1; q <= seq; ++q) {
    const Msg m = take(*a);
    ASSERT_TRUE(intact(m, q, kChunk));
    EXPECT_EQ(m.missed, 0u);
  }
  const std::uint32_t ps = pub->slot();
  pub.reset();
  s.sup().retire_publisher(ps);
  adopt_changes_nothing("retire_publisher");
  ASSERT_TRUE(settle(
      s.sup(), [&] { (void)take(*a); }, [](const StreamSweep& sw) { return !sw.pending; }));
  adopt_changes_nothing("the last sweep");
  EXPECT_TRUE(pool_whole(s.broker));
  auto next = s.publisher(11);
  ASSERT_TRUE(next);
  ASSERT_EQ(send(*next, 1, kInline), SendStatus::ok);
  ASSERT_TRUE(intact(take(*a), 1, kInline));
}

// A subscriber that joins a running publisher misses nothing: its first message counts from where the
// publisher stood when it connected.
TEST(StreamTest, LateSubscriberIsToldOfNothingMissed) {
  Stream s;
  auto a = s.subscriber(1);
  auto pub = s.publisher(10);
  ASSERT_TRUE(a && pub);
  for (std::uint64_t seq = 1; seq <= 5; ++seq) ASSERT_EQ(send(*pub, seq, kChunk), SendStatus::ok);
  auto b = s.subscriber(2);
  ASSERT_TRUE(b);
  ASSERT_EQ(send(*pub, 6, kInline), SendStatus::ok);
  const Msg m = take(*b);
  ASSERT_TRUE(intact(m, 6, kInline));
  EXPECT_EQ(m.missed, 0u);
  for (std::uint64_t seq = 1; seq <= 6; ++seq) ASSERT_TRUE(intact(take(*a), seq, seq < 6 ? kChunk : kInline));
}

// The broker closes the slot of a live subscriber (a slot nobody claimed after a restart, a socket that
// closed: close_subscriber(quiet = false)) while the application still holds a sample of a chunk message.
// A held sample's bytes must stay what was sent until it is released (shmbus.hpp, Sample: a large message
// "is read in place in shared memory and goes back to its publisher when the Sample is destroyed"): the
// chunk must not go back to its publisher while held.
// KNOWN BUG, this test fails: once the subscriber acked the close, StreamSupervisor::return_refs() gives
// back every chunk its held bits name (stream_supervisor.cpp, "What it held"), and release() of the held
// sample then leaves the bit to the broker (stream_port.cpp, let_go()); the publisher reuses the chunk
// while the sample still reads it.
// The broker closes the slot of a subscriber that lives on (close_session, free_unclaimed_slots): a
// sample the application still holds stays out of the publisher's hands until it is let go of; then it
// comes back, and the slot frees.
TEST(StreamTest, ALiveSubscribersHeldChunkIsNotReusedAfterTheBrokerClosesItsSlot) {
  Stream s;
  auto a = s.subscriber(1);
  auto pub = s.publisher(10);
  ASSERT_TRUE(a && pub);
  ASSERT_EQ(send(*pub, 1, kChunk), SendStatus::ok);
  ASSERT_EQ(send(*pub, 2, kChunk), SendStatus::ok);  // left unread: given back once the subscriber acked
  const Msg held = take(*a, false);                  // the application holds it
  ASSERT_TRUE(intact(held, 1, kChunk));
  const std::uint32_t as = a->slot();
  s.sup().close_subscriber(as, false);
  EXPECT_FALSE(take(*a).ok);  // sees its slot closed, acks
  EXPECT_TRUE(a->closed());
  std::uint64_t seq = 2;
  // Many sweeps while the publisher keeps publishing (and so acks and drains): the slot stays closing.
  EXPECT_FALSE(settle(
      s.sup(), [&] { (void)send(*pub, ++seq, kInline); },
      [&](const StreamSweep&) { return s.sub_state(as) == kSlotFree; }, 200));
  // The publisher's next messages, in every chunk it can get: never the held one.
  const auto loanable = loan_all(*pub, s.chunks());
  for (std::uint32_t c : loanable) {
    std::memset(s.broker.payload(c), 0xee, kChunk);
    EXPECT_NE(c, held.chunk) << "the chunk the subscriber holds is the publisher's to loan again";
  }
  EXPECT_EQ(loanable.size(), s.chunks() - 1);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(s.broker.payload(held.chunk)), kChunk), body(1, kChunk))
      << "the held sample's bytes were overwritten";
  unloan_all(*pub, loanable);
  // Let go of: it comes back to the publisher, the connection closes, the slot frees.
  a->release(held.conn, held.chunk);
  ASSERT_TRUE(settle(
      s.sup(), [&] { (void)send(*pub, ++seq, kInline); },
      [&](const StreamSweep& sw) { return !sw.pending && s.sub_state(as) == kSlotFree; }));
  EXPECT_EQ(loan_all(*pub, s.chunks()).size(), s.chunks()) << "every chunk is the publisher's again";
  EXPECT_TRUE(consistent(s.broker));
}

// ============================================================================================ multiprocess

// A subscriber process killed while it holds chunks and has chunk messages unread: the broker gives all
// of them back, the publisher keeps publishing to the survivor throughout, and every chunk comes home.
TEST(StreamProcessTest, KilledSubscriberHoldingAndOwingChunksGivesEveryChunkBack) {
  Stream s;
  auto a = s.subscriber(1);
  auto pub = s.publisher(10);
  ASSERT_TRUE(a && pub);
  constexpr std::uint64_t kSent = 7;
  constexpr std::uint64_t kRead = 5;  // 2 left unread
  Child child([&](Child& c) -> int {
    const auto slot = static_cast<std::uint32_t>(c.get());
    auto t = s.open();
    if (!t) return kChildFailed;
    auto sub = StreamSubscriber::attach(t, slot);
    if (!sub) return kChildFailed + 1;
    c.put(1);
    (void)c.get();  // published
    std::uint64_t held = 0;
    for (std::uint64_t i = 1; i <= kRead; ++i) {
      const Msg m = take(**sub, i % 3 == 1);  // give back 1 and 4, hold 2, 3 and 5
      if (!intact(m, i, kChunk)) return kChildFailed + 2;
      held += i % 3 == 1 ? 0 : 1;
    }
    c.put(held);
    (void)c.get();  // until killed
    return 0;
  });
  ASSERT_GT(child.pid(), 0);
  const std::uint32_t bs = s.add_subscriber(2, child.owner());
  ASSERT_TRUE(child.send(bs));
  ASSERT_EQ(child.recv(), 1u) << exit_text(child.wait(1s));
  for (std::uint64_t seq = 1; seq <= kSent; ++seq) ASSERT_EQ(send(*pub, seq, kChunk), SendStatus::ok);
  ASSERT_TRUE(child.send(kSent));
  ASSERT_EQ(child.recv(), 3u) << exit_text(child.wait(1s));
  for (std::uint64_t seq = 1; seq <= kSent; ++seq) ASSERT_TRUE(intact(take(*a), seq, kChunk));
  const auto e = child.kill();
  ASSERT_TRUE(killed(e)) << exit_text(e);
  EXPECT_TRUE(consistent(s.broker));

  (void)s.broker.reclaim(child.owner());
  EXPECT_EQ(s.sup().on_death(child.owner()), 1u);
  std::uint64_t seq = kSent;
  ASSERT_TRUE(settle(
      s.sup(),
      [&] {
        ++seq;
        ASSERT_EQ(send(*pub, seq, kChunk), SendStatus::ok);
        const Msg m = take(*a);
        ASSERT_TRUE(intact(m, seq, kChunk));
        ASSERT_EQ(m.missed, 0u);
      },
      [&](const StreamSweep& sw) { return !sw.pending && s.sub_state(bs) == kSlotFree; }))
      << "the dead subscriber's connection never finished: " << stream_census(s.broker).text();
  EXPECT_TRUE(consistent(s.broker));
  const auto all = loan_all(*pub, s.chunks());
  EXPECT_EQ(all.size(), s.chunks()) << "every chunk is the publisher's to loan again";
  unloan_all(*pub, all);
  const std::uint32_t ps = pub->slot();
  pub.reset();
  s.sup().retire_publisher(ps);
  ASSERT_TRUE(settle(
      s.sup(), [&] { (void)take(*a); }, [](const StreamSweep& sw) { return !sw.pending; }));
  EXPECT_EQ(s.pub_state(ps), detail::kPubFree);
  EXPECT_TRUE(pool_whole(s.broker));
}

// A publisher process killed after publishing: the subscriber reads everything it published (the orphan
// drain); a chunk the subscriber holds stays until it is given back; then every chunk and the slot are free.
TEST(StreamProcessTest, KilledPublishersMessagesAreStillReadAndEveryChunkIsFreed) {
  Stream s;
  auto a = s.subscriber(1);
  ASSERT_TRUE(a);
  constexpr std::uint64_t kSent = 6;  // 1..5 in chunks, 6 inline
  Child child([&](Child& c) -> int {
    const auto slot = static_cast<std::uint32_t>(c.get());
    auto t = s.open();
    if (!t) return kChildFailed;
    auto p = StreamPublisher::attach(t, slot, false);
    if (!p) return kChildFailed + 1;
    for (std::uint64_t seq = 1; seq <= kSent; ++seq)
      if (send(**p, seq, seq < kSent ? kChunk : kInline) != SendStatus::ok) return kChildFailed + 2;
    std::uint32_t loaned = 0;  // a loan it never publishes
    if ((*p)->loan(loaned, Deadline::now()) != SendStatus::ok) return kChildFailed + 3;
    c.put(1);
    (void)c.get();  // until killed
    return 0;
  });
  ASSERT_GT(child.pid(), 0);
  const std::uint32_t ps = s.add_publisher(2, child.owner());
  ASSERT_TRUE(child.send(ps));
  ASSERT_EQ(child.recv(), 1u) << exit_text(child.wait(1s));
  const auto e = child.kill();
  ASSERT_TRUE(killed(e)) << exit_text(e);
  bury(s, child.owner());
  EXPECT_EQ(s.pub_state(ps), detail::kPubRetired);

  std::vector<Msg> held;
  for (std::uint64_t seq = 1; seq <= kSent; ++seq) {
    const Msg m = take(*a, seq > 2);  // holds 1 and 2
    ASSERT_TRUE(intact(m, seq, seq < kSent ? kChunk : kInline));
    EXPECT_EQ(m.missed, 0u);
    if (seq <= 2) held.push_back(m);
  }
  EXPECT_FALSE(take(*a).ok);
  for (int i = 0; i < 10; ++i) {
    (void)s.sup().sweep();
    (void)take(*a);
  }
  EXPECT_EQ(s.pub_state(ps), detail::kPubRetired) << "chunks of it are still held";
  for (const Msg& m : held) {
    EXPECT_EQ(s.broker.pool().header(m.chunk).owner.load(), detail::slot_owner(ps).value)
        << "a held chunk was freed";
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(s.broker.payload(m.chunk)), kChunk),
              body(m.seq, kChunk));
  }
  EXPECT_EQ(s.slot_owned(ps), 2u) << "the rest (given back, cached, loaned) is freed already";
  for (const Msg& m : held) a->release(m.conn, m.chunk);
  ASSERT_TRUE(settle(
      s.sup(), [&] { (void)take(*a); }, [](const StreamSweep& sw) { return !sw.pending; }));
  EXPECT_EQ(s.pub_state(ps), detail::kPubFree);
  EXPECT_EQ(s.sub_state(a->slot()), kSlotActive);
  EXPECT_TRUE(pool_whole(s.broker));
  // The survivor still subscribes: a new publisher reaches it.
  auto next = s.publisher(11);
  ASSERT_TRUE(next);
  ASSERT_EQ(send(*next, 1, kChunk), SendStatus::ok);
  const Msg m = take(*a);
  ASSERT_TRUE(intact(m, 1, kChunk));
  EXPECT_EQ(m.publisher, next->id());
}

// ================================================================================================== faults

// A child publisher dies at "stream.pub.before_commit" on its n-th connection (subscriber slots in order):
// the message reaches the n-1 subscribers before it and no other; everything else is exact.
class StreamPublisherFaultTest : public ::testing::TestWithParam<int> {};

TEST_P(StreamPublisherFaultTest, KilledBeforeCommitLeavesEveryChunkAccountedFor) {
  const int nth = GetParam();
  Stream s;
  std::unique_ptr<StreamSubscriber> subs[2] = {s.subscriber(1), s.subscriber(2)};
  ASSERT_TRUE(subs[0] && subs[1]);
  Child child([&](Child& c) -> int {
    const auto slot = static_cast<std::uint32_t>(c.get());
    auto t = s.open();
    if (!t) return kChildFailed;
    auto p = StreamPublisher::attach(t, slot, false);
    if (!p) return kChildFailed + 1;
    for (std::uint64_t seq = 1; seq <= 3; ++seq)
      if (send(**p, seq, kChunk) != SendStatus::ok) return kChildFailed + 2;
    c.put(1);
    (void)c.get();
    if (!Child::arm("stream.pub.before_commit", nth)) return kNotArmed;
    (void)send(**p, 4, kChunk);
    return kNeverFired;
  });
  ASSERT_GT(child.pid(), 0);
  ASSERT_TRUE(child.send(s.add_publisher(3, child.owner())));
  ASSERT_EQ(child.recv(), 1u) << exit_text(child.wait(1s));
  ASSERT_TRUE(child.send(0));
  const auto e = child.wait();
  ASSERT_TRUE(killed(e)) << exit_text(e);
  EXPECT_TRUE(consistent(s.broker));
  bury(s, child.owner());

  int got_4 = 0;
  for (auto& sub : subs) {
    for (std::uint64_t seq = 1; seq <= 3; ++seq) ASSERT_TRUE(intact(take(*sub), seq, kChunk));
    const Msg m = take(*sub);
    if (m.ok) {
      EXPECT_TRUE(intact(m, 4, kChunk));
      ++got_4;
    }
    EXPECT_FALSE(take(*sub).ok);
  }
  EXPECT_EQ(got_4, nth - 1);
  ASSERT_TRUE(settle(
      s.sup(),
      [&] {
        for (auto& sub : subs) (void)take(*sub);
      },
      [](const StreamSweep& sw) { return !sw.pending; }))
      << "the dead publisher's slot was never freed: " << stream_census(s.broker).text();
  EXPECT_EQ(s.broker.active_publishers(), 0u);
  EXPECT_EQ(s.broker.active_subscribers(), 2u);
  EXPECT_TRUE(pool_whole(s.broker));
}

INSTANTIATE_TEST_SUITE_P(Connections, StreamPublisherFaultTest, ::testing::Values(1, 2));

// Drop-oldest: the publisher dies at "stream.pub.before_commit" while it overwrites its subscriber's oldest
// inline slot (the slot reads kSlotBusy, S3). The subscriber reads what is left, and the broker must still
// finish the orphan connection and free the publisher's slot. (At 569daa3 it never did: the subscriber
// steps past the busy slot at the head, its tail ends at head + 1, and sweep() waited for tail == head.)
TEST(StreamFaultTest, PublisherKilledWhileOverwritingAnInlineSlotStillLetsTheOrphanDrain) {
  Stream s(stream_options(Overflow::drop_oldest));
  auto a = s.subscriber(1);
  ASSERT_TRUE(a);
  const std::uint64_t depth = s.broker.depth();
  Child child([&](Child& c) -> int {
    const auto slot = static_cast<std::uint32_t>(c.get());
    auto t = s.open();
    if (!t) return kChildFailed;
    auto p = StreamPublisher::attach(t, slot, false);
    if (!p) return kChildFailed + 1;
    for (std::uint64_t seq = 1; seq <= depth; ++seq)  // a's ring is full
      if (send(**p, seq, kInline) != SendStatus::ok) return kChildFailed + 2;
    c.put(1);
    (void)c.get();
    if (!Child::arm("stream.pub.before_commit", 1)) return kNotArmed;
    (void)send(**p, depth + 1, kInline);  // overwrites message 1's slot
    return kNeverFired;
  });
  ASSERT_GT(child.pid(), 0);
  const std::uint32_t ps = s.add_publisher(3, child.owner());
  ASSERT_TRUE(child.send(ps));
  ASSERT_EQ(child.recv(), 1u) << exit_text(child.wait(1s));
  ASSERT_TRUE(child.send(0));
  const auto e = child.wait();
  ASSERT_TRUE(killed(e)) << exit_text(e);
  bury(s, child.owner());

  Msg m = take(*a);
  ASSERT_TRUE(intact(m, 2, kInline)) << "message 1's slot was being overwritten";
  EXPECT_EQ(m.missed, 1u);
  for (std::uint64_t seq = 3; seq <= depth; ++seq) ASSERT_TRUE(intact(take(*a), seq, kInline));
  EXPECT_FALSE(take(*a).ok);
  const bool done = settle(
      s.sup(), [&] { (void)take(*a); }, [](const StreamSweep& sw) { return !sw.pending; });
  const detail::ConnectionShared* orphan = nullptr;
  for (std::uint32_t k = 0; k < s.view().conn_capacity; ++k)
    if (s.view().conn(k)->state.load() != detail::kConnFree && s.view().conn(k)->pub == ps)
      orphan = s.view().conn(k);
  EXPECT_TRUE(done) << "the orphan connection never drained"
                    << (orphan ? ": state " + std::to_string(orphan->state.load()) + ", subscriber tail " +
                                     std::to_string(orphan->tail.load()) + ", publisher head " +
                                     std::to_string(orphan->head.load())
                               : std::string());
  EXPECT_EQ(s.pub_state(ps), detail::kPubFree);
  EXPECT_TRUE(pool_whole(s.broker));
}

// A child publisher dies at "stream.pub.before_closed": it got every reference back on the connection of
// a subscriber that left, and dies before it says so. The broker frees the connection when it retires the
// slot; the survivor reads everything; every chunk comes home.
TEST(StreamFaultTest, PublisherKilledBeforeClosedLeavesEveryChunkAccountedFor) {
  Stream s;
  auto a = s.subscriber(1);
  auto b = s.subscriber(2);
  ASSERT_TRUE(a && b);
  Child child([&](Child& c) -> int {
    const auto slot = static_cast<std::uint32_t>(c.get());
    auto t = s.open();
    if (!t) return kChildFailed;
    auto p = StreamPublisher::attach(t, slot, false);
    if (!p) return kChildFailed + 1;
    for (std::uint64_t seq = 1; seq <= 3; ++seq)
      if (send(**p, seq, kChunk) != SendStatus::ok) return kChildFailed + 2;
    c.put(1);
    (void)c.get();  // b left
    if (!Child::arm("stream.pub.before_closed", 1)) return kNotArmed;
    if (send(**p, 4, kInline) != SendStatus::ok) return kChildFailed + 3;  // sees the change, acks it
    c.put(2);
    (void)c.get();  // the broker gave b's chunks back
    for (std::uint64_t seq = 5; seq < 1000; ++seq) (void)send(**p, seq, kChunk);
    return kNeverFired;
  });
  ASSERT_GT(child.pid(), 0);
  const std::uint32_t ps = s.add_publisher(3, child.owner());
  ASSERT_TRUE(child.send(ps));
  ASSERT_EQ(child.recv(), 1u) << exit_text(child.wait(1s));
  ASSERT_TRUE(intact(take(*b), 1, kChunk));
  ASSERT_TRUE(intact(take(*b, false), 2, kChunk));  // held; 3 unread
  const std::uint32_t bs = b->slot();
  b.reset();
  s.sup().close_subscriber(bs, true);
  ASSERT_TRUE(child.send(0));
  ASSERT_EQ(child.recv(), 2u) << exit_text(child.wait(1s));
  const StreamSweep sw = s.sup().sweep();
  EXPECT_EQ(sw.chunks_returned, 2u) << "2 held or unread by the subscriber that left";
  ASSERT_TRUE(child.send(0));
  const auto e = child.wait();
  ASSERT_TRUE(killed(e)) << exit_text(e);
  EXPECT_TRUE(consistent(s.broker));
  bury(s, child.owner());

  std::uint64_t seq = 0;
  for (Msg m = take(*a); m.ok; m = take(*a)) {
    ++seq;
    ASSERT_TRUE(intact(m, seq, seq == 4 ? kInline : kChunk));
    EXPECT_EQ(m.missed, 0u);
  }
  EXPECT_GE(seq, 4u);
  ASSERT_TRUE(settle(
      s.sup(), [&] { (void)take(*a); },
      [&](const StreamSweep& w) { return !w.pending && s.sub_state(bs) == kSlotFree; }))
      << stream_census(s.broker).text();
  EXPECT_EQ(s.pub_state(ps), detail::kPubFree);
  EXPECT_EQ(s.live_conns(), 0u);
  EXPECT_TRUE(pool_whole(s.broker));
  auto next = s.publisher(11);
  ASSERT_TRUE(next);
  ASSERT_EQ(send(*next, 1, kChunk), SendStatus::ok);
  ASSERT_TRUE(intact(take(*a), 1, kChunk)) << "the survivor still receives";
}

// A child subscriber dies inside a step of its own: after marking a chunk held but before moving its tail
// past it ("stream.sub.after_held"), or after pushing a completion but before clearing the held bit
// ("stream.sub.after_completion"). Each chunk must go back to the publisher exactly once: the survivor
// holds every chunk the dead one had, so a chunk given back twice would reach the publisher's cache while
// the survivor still holds it.
class StreamSubscriberFaultTest : public ::testing::TestWithParam<const char*> {};

TEST_P(StreamSubscriberFaultTest, KilledMidStepGivesEveryChunkBackExactlyOnce) {
  const std::string point = GetParam();
  const bool in_release = point == "stream.sub.after_completion";
  Stream s;
  auto a = s.subscriber(1);
  auto pub = s.publisher(10);
  ASSERT_TRUE(a && pub);
  Child child([&](Child& c) -> int {
    const auto slot = static_cast<std::uint32_t>(c.get());
    auto t = s.open();
    if (!t) return kChildFailed;
    auto sub = StreamSubscriber::attach(t, slot);
    if (!sub) return kChildFailed + 1;
    c.put(1);
    (void)c.get();  // 1..4 published
    // 1: taken and given back; 2: taken and held; then the step that dies.
    if (!intact(take(**sub), 1, kChunk)) return kChildFailed + 2;
    const Msg two = take(**sub, false);
    if (!intact(two, 2, kChunk)) return kChildFailed + 3;
    Msg three;
    if (in_release) {
      three = take(**sub, false);
      if (!intact(three, 3, kChunk)) return kChildFailed + 4;
    }
    if (!Child::arm(point, 1)) return kNotArmed;
    if (in_release) {
      (*sub)->release(three.conn, three.chunk);  // 2 still held, 4 unread
    } else {
      Received r;
      (void)(*sub)->try_receive(r);  // takes 3; 4 unread
    }
    return kNeverFired;
  });
  ASSERT_GT(child.pid(), 0);
  const std::uint32_t bs = s.add_subscriber(2, child.owner());
  ASSERT_TRUE(child.send(bs));
  ASSERT_EQ(child.recv(), 1u) << exit_text(child.wait(1s));
  for (std::uint64_t seq = 1; seq <= 4; ++seq) ASSERT_EQ(send(*pub, seq, kChunk), SendStatus::ok);
  std::vector<Msg> held;  // a holds all four
  for (std::uint64_t seq = 1; seq <= 4; ++seq) {
    held.push_back(take(*a, false));
    ASSERT_TRUE(intact(held.back(), seq, kChunk));
  }
  ASSERT_TRUE(child.send(0));
  const auto e = child.wait();
  ASSERT_TRUE(killed(e)) << exit_text(e);
  EXPECT_TRUE(s.held_bit(bs, held[2].chunk)) << (in_release ? "died before clearing message 3's held bit"
                                                            : "died after marking message 3's chunk held");
  EXPECT_TRUE(consistent(s.broker));

  bury(s, child.owner());
  std::uint64_t seq = 4;
  ASSERT_TRUE(settle(
      s.sup(),
      [&] {
        ++seq;
        ASSERT_EQ(send(*pub, seq, kInline), SendStatus::ok);
        ASSERT_TRUE(intact(take(*a), seq, kInline));
      },
      [&](const StreamSweep& sw) { return !sw.pending && s.sub_state(bs) == kSlotFree; }))
      << "the dead subscriber's connection never finished: " << stream_census(s.broker).text();

  std::set<std::uint32_t> held_chunks;
  for (const Msg& m : held) held_chunks.insert(m.chunk);
  ASSERT_EQ(held_chunks.size(), 4u);
  auto loanable = loan_all(*pub, s.chunks());
  for (std::uint32_t c : loanable)
    EXPECT_EQ(held_chunks.count(c), 0u)
        << "chunk " << c << " is loanable while the survivor holds it: given back twice";
  EXPECT_EQ(loanable.size(), s.chunks() - 4) << "every chunk but the survivor's four is the publisher's";
  unloan_all(*pub, loanable);
  for (std::size_t i = 0; i < held.size(); ++i)
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(s.broker.payload(held[i].chunk)), kChunk),
              body(i + 1, kChunk))
        << "message " << i + 1 << "'s chunk was reused while held";
  for (const Msg& m : held) a->release(m.conn, m.chunk);
  loanable = loan_all(*pub, s.chunks());
  EXPECT_EQ(loanable.size(), s.chunks());
  unloan_all(*pub, loanable);
  const std::uint32_t ps = pub->slot();
  pub.reset();
  s.sup().retire_publisher(ps);
  ASSERT_TRUE(settle(
      s.sup(), [&] { (void)take(*a); }, [](const StreamSweep& sw) { return !sw.pending; }));
  EXPECT_EQ(s.pub_state(ps), detail::kPubFree);
  EXPECT_TRUE(pool_whole(s.broker));
}

INSTANTIATE_TEST_SUITE_P(Points, StreamSubscriberFaultTest,
                         ::testing::Values("stream.sub.after_held", "stream.sub.after_completion"));

// A broker (a child running the sweep) dies at "stream.collect.after_take": it took a retired publisher's
// chunk (owner word: the broker's process) and did not free it. The next broker finds the dead broker among
// the dead owners, reclaims the chunk once, and finishes the collection.
TEST(StreamFaultTest, BrokerKilledWhileCollectingARetiredPublishersChunkFreesItOnce) {
  Stream s;
  auto a = s.subscriber(1);
  auto pub = s.publisher(10);
  ASSERT_TRUE(a && pub);
  for (std::uint64_t seq = 1; seq <= 4; ++seq) ASSERT_EQ(send(*pub, seq, kChunk), SendStatus::ok);
  ASSERT_TRUE(intact(take(*a), 1, kChunk));  // given back, not yet drained: the slot's, unreferenced
  const Msg held = take(*a, false);
  ASSERT_TRUE(intact(held, 2, kChunk));  // 3 and 4 unread
  std::uint32_t loaned = 0;
  ASSERT_EQ(pub->loan(loaned, Deadline::now()), SendStatus::ok);  // never published: unreferenced
  const std::uint32_t ps = pub->slot();
  pub.reset();
  s.sup().retire_publisher(ps);
  EXPECT_GE(s.slot_owned(ps), 4u);

  Child broker([&](Child& c) -> int {
    (void)c.get();
    auto t = s.open();
    if (!t) return kChildFailed;
    if (!Child::arm("stream.collect.after_take", 1)) return kNotArmed;
    (void)StreamSupervisor(*t).sweep();
    return kNeverFired;
  });
  ASSERT_GT(broker.pid(), 0);
  ASSERT_TRUE(broker.send(0));
  const auto e = broker.wait();
  ASSERT_TRUE(killed(e)) << exit_text(e);

  // The next broker: adopt, then reclaim what dead processes held (broker.cpp's order).
  auto fresh = s.open();
  ASSERT_TRUE(fresh);
  StreamSupervisor next(*fresh);
  (void)next.adopt();
  const auto dead = fresh->dead_owners();
  EXPECT_TRUE(std::find(dead.begin(), dead.end(), broker.owner()) != dead.end())
      << "the chunk the dead broker took names it";
  EXPECT_EQ(fresh->reclaim(broker.owner()).freed, 1u);
  EXPECT_TRUE(consistent(*fresh));
  ASSERT_TRUE(intact(take(*a), 3, kChunk));
  ASSERT_TRUE(intact(take(*a), 4, kChunk));
  a->release(held.conn, held.chunk);
  ASSERT_TRUE(settle(
      next, [&] { (void)take(*a); }, [](const StreamSweep& sw) { return !sw.pending; }))
      << stream_census(*fresh).text();
  EXPECT_EQ(s.pub_state(ps), detail::kPubFree);
  EXPECT_TRUE(pool_whole(*fresh));
  auto p2 = s.publisher(11);
  ASSERT_TRUE(p2);
  ASSERT_EQ(send(*p2, 1, kChunk), SendStatus::ok);
  ASSERT_TRUE(intact(take(*a), 1, kChunk)) << "the survivor still receives";
}

// A broker (a child running the sweep) dies at "stream.return.after_take" in return_refs, while it gives
// back the chunks of a subscriber that left: on its n-th step (1: an unread entry, its tail moved; 2: a
// held chunk, its bit cleared), before the completion is written. The next broker finishes that step once:
// the survivor holds every chunk involved, so a chunk given back twice would become loanable under it.
class StreamReturnFaultTest : public ::testing::TestWithParam<int> {};

TEST_P(StreamReturnFaultTest, BrokerKilledWhileGivingBackASubscribersChunksGivesEachBackOnce) {
  const int nth = GetParam();
  Stream s;
  auto a = s.subscriber(1);
  auto b = s.subscriber(2);
  auto pub = s.publisher(10);
  ASSERT_TRUE(a && b && pub);
  for (std::uint64_t seq = 1; seq <= 3; ++seq) ASSERT_EQ(send(*pub, seq, kChunk), SendStatus::ok);
  std::vector<Msg> held;  // a holds all three
  for (std::uint64_t seq = 1; seq <= 3; ++seq) {
    held.push_back(take(*a, false));
    ASSERT_TRUE(intact(held.back(), seq, kChunk));
  }
  ASSERT_TRUE(intact(take(*b), 1, kChunk));         // given back by b itself
  ASSERT_TRUE(intact(take(*b, false), 2, kChunk));  // held; 3 unread
  const std::uint32_t bs = b->slot();
  b.reset();
  s.sup().close_subscriber(bs, true);
  ASSERT_EQ(send(*pub, 4, kInline), SendStatus::ok);  // the publisher acks the change
  ASSERT_TRUE(intact(take(*a), 4, kInline));

  Child broker([&](Child& c) -> int {
    (void)c.get();
    auto t = s.open();
    if (!t) return kChildFailed;
    if (!Child::arm("stream.return.after_take", nth)) return kNotArmed;
    (void)StreamSupervisor(*t).sweep();
    return kNeverFired;
  });
  ASSERT_GT(broker.pid(), 0);
  ASSERT_TRUE(broker.send(0));
  const auto e = broker.wait();
  ASSERT_TRUE(killed(e)) << exit_text(e);

  auto fresh = s.open();
  ASSERT_TRUE(fresh);
  StreamSupervisor next(*fresh);
  (void)next.adopt();
  for (OwnerId d : fresh->dead_owners()) {
    (void)fresh->reclaim(d);
    (void)next.on_death(d);
  }
  std::uint64_t seq = 4;
  ASSERT_TRUE(settle(
      next,
      [&] {
        ++seq;
        ASSERT_EQ(send(*pub, seq, kInline), SendStatus::ok);
        ASSERT_TRUE(intact(take(*a), seq, kInline));
      },
      [&](const StreamSweep& sw) { return !sw.pending && s.sub_state(bs) == kSlotFree; }))
      << "the connection of the subscriber that left never finished: " << stream_census(*fresh).text();

  std::set<std::uint32_t> held_chunks;
  for (const Msg& m : held) held_chunks.insert(m.chunk);
  auto loanable = loan_all(*pub, s.chunks());
  for (std::uint32_t c : loanable)
    EXPECT_EQ(held_chunks.count(c), 0u)
        << "chunk " << c << " is loanable while the survivor holds it: given back twice";
  EXPECT_EQ(loanable.size(), s.chunks() - 3);
  unloan_all(*pub, loanable);
  for (const Msg& m : held) a->release(m.conn, m.chunk);
  loanable = loan_all(*pub, s.chunks());
  EXPECT_EQ(loanable.size(), s.chunks());
  unloan_all(*pub, loanable);
  const std::uint32_t ps = pub->slot();
  pub.reset();
  next.retire_publisher(ps);
  ASSERT_TRUE(settle(
      next, [&] { (void)take(*a); }, [](const StreamSweep& sw) { return !sw.pending; }));
  EXPECT_TRUE(pool_whole(*fresh));
}

INSTANTIATE_TEST_SUITE_P(Steps, StreamReturnFaultTest, ::testing::Values(1, 2));

// A child publisher dies inside a step of the chunk pool, under its slot's identity: taking a chunk from
// the free ring (claimed, or about to be), or giving one back (the owner word stamped queued, before or
// after the cell's CAS), when its cache overflows. The broker's collection of the retired slot must leave
// no chunk behind, and the pool's free ring must stay usable.
// (At 569daa3 "pool.push.after_stamp" leaked the chunk: stamped queued by the slot identity, in no ring,
// and neither ChunkPool::reclaim() nor the collection of the retired slot took it.)
class StreamPoolFaultTest : public ::testing::TestWithParam<const char*> {};

TEST_P(StreamPoolFaultTest, PublisherKilledInsideAPoolStepLeavesNoChunkBehind) {
  const std::string point = GetParam();
  Stream s;
  auto a = s.subscriber(1);
  ASSERT_TRUE(a);
  Child child([&](Child& c) -> int {
    const auto slot = static_cast<std::uint32_t>(c.get());
    auto t = s.open();
    if (!t) return kChildFailed;
    auto p = StreamPublisher::attach(t, slot, false);
    if (!p) return kChildFailed + 1;
    for (std::uint64_t seq = 1; seq <= 2; ++seq)
      if (send(**p, seq, kChunk) != SendStatus::ok) return kChildFailed + 2;
    c.put(1);
    (void)c.get();
    if (!Child::arm(point, 1)) return kNotArmed;
    // More loans than the publisher's cache keeps (max(16, depth)): every one from the free ring, and
    // giving them back overflows the cache into the free ring.
    std::vector<std::uint32_t> loans;
    std::uint32_t chunk = 0;
    while (loans.size() < 24 && (*p)->loan(chunk, Deadline::now()) == SendStatus::ok) loans.push_back(chunk);
    for (std::uint32_t l : loans) (*p)->unloan(l);
    return kNeverFired;
  });
  ASSERT_GT(child.pid(), 0);
  const std::uint32_t ps = s.add_publisher(3, child.owner());
  ASSERT_TRUE(child.send(ps));
  ASSERT_EQ(child.recv(), 1u) << exit_text(child.wait(1s));
  ASSERT_TRUE(child.send(0));
  const auto e = child.wait();
  ASSERT_TRUE(killed(e)) << exit_text(e);
  bury(s, child.owner());
  for (std::uint64_t seq = 1; seq <= 2; ++seq) ASSERT_TRUE(intact(take(*a), seq, kChunk));
  ASSERT_TRUE(settle(
      s.sup(), [&] { (void)take(*a); }, [](const StreamSweep& sw) { return !sw.pending; }))
      << "the dead publisher's slot was never freed: " << stream_census(s.broker).text();
  EXPECT_EQ(s.pub_state(ps), detail::kPubFree);
  EXPECT_TRUE(pool_whole(s.broker));
  auto next = s.publisher(11);
  ASSERT_TRUE(next);
  const auto all = loan_all(*next, s.chunks());
  EXPECT_EQ(all.size(), s.chunks()) << "the free ring gives every chunk out again";
  unloan_all(*next, all);
  ASSERT_EQ(send(*next, 1, kChunk), SendStatus::ok);
  ASSERT_TRUE(intact(take(*a), 1, kChunk));
}

INSTANTIATE_TEST_SUITE_P(PoolSteps, StreamPoolFaultTest,
                         ::testing::Values("pool.pop.before_claim", "pool.pop.after_claim",
                                           "pool.push.after_stamp", "pool.push.after_cas"));

}  // namespace
}  // namespace shmbus
