#include "broker.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include "shmbus/detail/control.hpp"
#include "shmbus/detail/stream_supervisor.hpp"
#include "shmbus/owner.hpp"
#include "shmbus/paths.hpp"
#include "shmbus/segment.hpp"
#include "shmbus/topic.hpp"
#include "stats.hpp"

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

namespace shmbus::broker {
namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

// How long a session whose socket closed keeps its pidfd watched: a process's exit closes its sockets
// before its pidfd becomes readable, so an EOF alone does not tell "closed its client" from "dying".
constexpr auto kLinger = std::chrono::seconds(2);
// Replies a client does not read pile up here; past this the client is dropped.
constexpr std::size_t kMaxPendingWrite = 4u << 20;
constexpr std::size_t kMaxClientName = 128;
constexpr int kSweepEveryTicks = 5;  // dead-owner sweep: every 5 ticks (1 s at the default 200 ms)
// How long after its start a broker waits for running clients to claim back the subscriber slots it
// adopted (they reconnect within about a second). Slots of live processes unclaimed by then are freed:
// nobody reads them, and a block-policy publisher would wait on them.
constexpr auto kClaimGrace = std::chrono::seconds(5);

std::string in_quotes(std::string_view s) {
  return "\"" + std::string(s) + "\"";
}

int pidfd_open(pid_t pid) {
  return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
}

// An owned file descriptor.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      reset();
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  ~Fd() { reset(); }
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }
  explicit operator bool() const { return fd_ >= 0; }
  void reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

// epoll_event.data: what the fd is (top byte) and, for per-client fds, the session id. Ids, not
// pointers: an event for a session closed earlier in the same batch finds nothing and is dropped.
enum class Tag : std::uint64_t { listen = 1, signal = 2, timer = 3, conn = 4, pidfd = 5 };
std::uint64_t tag(Tag t, std::uint64_t id = 0) {
  return (static_cast<std::uint64_t>(t) << 56) | id;
}
Tag tag_of(std::uint64_t v) {
  return static_cast<Tag>(v >> 56);
}
std::uint64_t id_of(std::uint64_t v) {
  return v & ((1ULL << 56) - 1);
}

// A request the broker refuses; the connection stays open. Thrown by the field readers below and
// caught in dispatch(), so that each op reads its fields in straight-line code.
struct BadRequest {
  Error error;
};

std::string req_string(const json& r, const char* key) {
  auto it = r.find(key);
  if (it == r.end() || !it->is_string())
    throw BadRequest{Error(Errc::invalid_argument, std::string("request needs \"") + key + "\" (a string)")};
  return it->get<std::string>();
}

std::optional<std::uint64_t> opt_uint(const json& r, const char* key) {
  auto it = r.find(key);
  if (it == r.end() || it->is_null()) return std::nullopt;
  if (!it->is_number_unsigned())
    throw BadRequest{
        Error(Errc::invalid_argument, std::string("\"") + key + "\" must be a non-negative integer")};
  return it->get<std::uint64_t>();
}

std::uint64_t req_uint(const json& r, const char* key) {
  auto v = opt_uint(r, key);
  if (!v)
    throw BadRequest{
        Error(Errc::invalid_argument, std::string("request needs \"") + key + "\" (an integer)")};
  return *v;
}

struct SlotRecord {
  std::uint64_t topic_id;
  std::uint32_t slot;
  std::uint64_t port;  // the client's port id, by which a timed-out request is undone
  bool publisher;      // a publisher slot, else a subscriber slot
};

struct Session {
  std::uint64_t id = 0;
  Fd sock;
  Fd pidfd;
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
  OwnerId owner;
  std::string name;
  bool hello = false;
  bool epollout = false;  // EPOLLOUT is registered (a reply is pending)
  std::string rbuf;
  std::string wbuf;
  std::vector<SlotRecord> slots;
  std::uint64_t slots_freed = 0;  // slots let go when the socket closed (reported if the process died)
  std::optional<Clock::time_point> linger_until;  // set once the socket is closed

  std::string who() const {
    return "client pid " + std::to_string(pid) + (name.empty() ? "" : " (" + name + ")");
  }
};

struct Topic {
  TopicHandle handle;
  std::string name;
};

// Give an adopted segment to `gid` (the configured group); new segments get it at creation.
void chown_segment(const std::string& name, std::optional<gid_t> gid) {
  if (!gid) return;
  const int fd = ::shm_open(segment_shm_name(name).c_str(), O_RDWR | O_CLOEXEC, 0);
  if (fd < 0 || ::fchown(fd, static_cast<uid_t>(-1), *gid) != 0)
    spdlog::warn("cannot give segment {} to group {}: {}", name, *gid, std::strerror(errno));
  if (fd >= 0) ::close(fd);
}

}  // namespace

// ---- the domain lock ----

std::string domain_lock_path(std::string_view domain) {
  return "/dev/shm/shmbus." + std::string(domain) + ".lock";
}

namespace {
Error foreign_lock(const std::string& path, std::string_view domain, uid_t owner) {
  return Error(Errc::permission_denied,
               "the domain lock " + path + " is owned by uid " + std::to_string(owner) +
                   ", not by this user (uid " + std::to_string(::geteuid()) +
                   "): another user holds domain \"" + std::string(domain) +
                   "\"; pick another domain, or have that user (or root) remove the file");
}
}  // namespace

Result<DomainLock> DomainLock::take(std::string_view domain, const std::string& holder) {
  const std::string path = domain_lock_path(domain);
  // The file may be unlinked (purge) between our open and our flock: then we locked an orphan inode, and
  // another process may lock a new file at the path. Lock, then check the path still names our inode.
  for (int attempt = 0; attempt < 100; ++attempt) {
    // O_NOFOLLOW: /dev/shm is writable by everyone; a symlink planted there must not redirect the lock.
    Fd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
    if (!fd) {
      const int err = errno;
      struct stat other {};
      if (err == EACCES && ::lstat(path.c_str(), &other) == 0 && other.st_uid != ::geteuid())
        return foreign_lock(path, domain, other.st_uid);
      return Error::from_errno(err, "cannot open the domain lock " + path);
    }
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) return Error::from_errno(errno, "cannot stat " + path);
    if (!S_ISREG(st.st_mode) || st.st_uid != ::geteuid()) return foreign_lock(path, domain, st.st_uid);
    if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      if (err != EWOULDBLOCK) return Error::from_errno(err, "cannot lock " + path);
      // The holder writes who it is right after it locks: wait a moment for it.
      std::string who;
      for (int i = 0; i < 20 && who.empty(); ++i) {
        char buf[512];
        const ssize_t n = ::pread(fd.get(), buf, sizeof buf - 1, 0);
        if (n > 0 && buf[n - 1] == '\n') who.assign(buf, static_cast<std::size_t>(n - 1));
        if (who.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
      return Error(
          Errc::already_exists,
          who.empty() ? "domain " + std::string(domain) + " is held by another process (pid unknown)" : who);
    }
    struct stat now {};
    if (::stat(path.c_str(), &now) != 0 || now.st_ino != st.st_ino || now.st_dev != st.st_dev) continue;
    // Ours: say who holds it, for the error above.
    const std::string text = holder + "\n";
    if (::ftruncate(fd.get(), 0) != 0 ||
        ::pwrite(fd.get(), text.data(), text.size(), 0) != static_cast<ssize_t>(text.size()))
      return Error::from_errno(errno, "cannot write " + path);
    DomainLock l;
    l.fd_ = fd.release();
    l.path_ = path;
    return l;
  }
  return Error(Errc::system_error, "the domain lock " + path + " keeps being replaced; try again");
}

void DomainLock::unlink() noexcept {
  // Safe while we hold the lock: a process that opened the old inode re-checks the path after flock.
  if (fd_ >= 0) ::unlink(path_.c_str());
}

DomainLock::~DomainLock() {
  if (fd_ >= 0) {
    // Empty it before the unlock (a broker that finds it empty says "pid unknown", never a stale pid).
    (void)::ftruncate(fd_, 0);
    ::close(fd_);
  }
}

// /dev/shm/shmbus.<domain>.<id> and shmbus.<domain>.dir: every segment of a domain.
std::vector<std::string> domain_segments(std::string_view domain) {
  const std::string prefix = "shmbus." + std::string(domain) + ".";
  std::vector<std::string> out;
  DIR* dp = ::opendir("/dev/shm");
  if (dp == nullptr) return out;
  while (dirent* e = ::readdir(dp)) {
    const std::string_view name(e->d_name);
    if (name.substr(0, prefix.size()) != prefix) continue;
    const std::string_view rest = name.substr(prefix.size());
    const bool topic =
        !rest.empty() && rest.size() <= 19 && rest.find_first_not_of("0123456789") == std::string_view::npos;
    if (topic || rest == "dir") out.emplace_back(name.substr(std::string_view("shmbus.").size()));
  }
  ::closedir(dp);
  return out;
}

std::size_t remove_domain_segments(std::string_view domain) {
  std::size_t n = 0;
  const std::string prefix = std::string(domain) + ".";
  for (const std::string& name : domain_segments(domain)) {
    // A topic still mapped by running clients is marked first, so that their ports fail instead of
    // publishing into a segment nobody will read again.
    const std::string rest = name.substr(prefix.size());
    if (rest != "dir")
      if (auto h = TopicHandle::open(domain, std::stoull(rest))) h->mark_deleted();
    if (Segment::remove(name)) ++n;
  }
  return n;
}

Result<std::size_t> purge_domain(std::string_view domain) {
  if (auto st = check_domain_name(domain); !st) return st.error();
  auto lock = DomainLock::take(
      domain, "domain " + std::string(domain) + " is being purged (pid " + std::to_string(::getpid()) + ")");
  if (!lock) return lock.error();
  const std::size_t n = remove_domain_segments(domain);
  lock->unlink();  // the domain is gone: leave nothing (a root-owned lock would shut other users out)
  return n;
}

struct Broker::Impl {
  BrokerOptions opt;
  std::string domain;
  std::string runtime_dir;
  std::string dir;
  std::string sock_path;
  std::string pid_path;
  std::optional<DomainLock> lock;
  Fd listen;
  Fd ep;
  Fd sig;
  Fd timer;
  sigset_t old_mask{};
  bool mask_changed = false;
  bool pid_written = false;
  bool listening = false;
  std::optional<DirectoryWriter> directory;
  std::map<std::uint64_t, Topic> topics;  // by id
  std::map<std::string, std::uint64_t, std::less<>> by_name;
  std::map<std::uint64_t, std::unique_ptr<Session>> sessions;
  std::uint64_t next_session = 1;
  Clock::time_point started = Clock::now();
  Clock::time_point idle_since = Clock::now();
  std::uint32_t idle_exit_s = kDefaultIdleExitS;
  std::uint64_t ticks = 0;
  std::map<std::uint64_t, Clock::time_point> unknown_warned;  // owners of unknown liveness, last warned
  bool stop_requested = false;
  bool purge = false;  // remove every segment at shutdown (--purge-on-exit, or stop with "purge")
  std::chrono::milliseconds resweep_in{0};  // 0: no stream work left; see sweep_streams()
  Clock::time_point resweep_at;
  bool unclaimed_swept = false;  // the kClaimGrace sweep of adopted slots has run
  bool serving = false;          // start() succeeded: shutdown() may remove the segments
  bool shut_down = false;

  ~Impl() {
    if (!shut_down) shutdown();
    if (mask_changed) ::pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
  }

  // ---- start ----

  Status start() {
    domain = opt.domain.empty() ? default_domain() : opt.domain;
    if (auto st = check_domain_name(domain); !st) return st.error();
    idle_exit_s = opt.idle_exit_s.value_or(opt.config.idle_exit_s.value_or(kDefaultIdleExitS));
    auto rt = runtime_dir_result();
    if (!rt) return rt.error();
    if (auto st = take_lock(); !st) return st;
    if (auto st = block_signals(); !st) return st;
    if (auto st = adopt_segments(); !st) return st;
    if (auto st = listen_socket(); !st) return st;
    if (auto st = make_loop(); !st) return st;
    serving = true;
    spdlog::info("broker for domain \"{}\" (pid {}) listening on {}; {} topic(s){}", domain, ::getpid(),
                 sock_path, topics.size(),
                 opt.autostart ? fmt::format("; autostarted, idle exit after {} s", idle_exit_s) : "");
    return {};
  }

  Result<std::string> runtime_dir_result() {
    auto rt = shmbus::runtime_dir();
    if (!rt) return rt.error();
    runtime_dir = *rt;
    auto d = domain_dir(domain);
    if (!d) return d.error();
    dir = *d;
    sock_path = dir + "/broker.sock";
    pid_path = dir + "/broker.pid";
    return dir;
  }

  Status take_lock() {
    auto l = DomainLock::take(domain, "a broker for domain " + domain + " already runs (pid " +
                                          std::to_string(::getpid()) + ", runtime dir " + runtime_dir + ")");
    if (!l) return l.error();
    lock.emplace(std::move(l).value());
    // The lock is ours: whatever socket or pid file is there was left by a broker that died.
    const std::string text = std::to_string(::getpid()) + "\n";
    const std::string tmp = pid_path + ".tmp";
    ::unlink(tmp.c_str());  // a leftover of a broker killed mid-write (we hold the lock)
    Fd f(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644));
    if (!f || ::write(f.get(), text.data(), text.size()) != static_cast<ssize_t>(text.size()) ||
        ::rename(tmp.c_str(), pid_path.c_str()) != 0)
      return Error::from_errno(errno, "cannot write " + pid_path);
    pid_written = true;
    return {};
  }

  Status block_signals() {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    if (::pthread_sigmask(SIG_BLOCK, &set, &old_mask) != 0)
      return Error(Errc::system_error, "pthread_sigmask failed");
    mask_changed = true;
    ::signal(SIGPIPE, SIG_IGN);  // replies use MSG_NOSIGNAL; this covers anything else
    sig = Fd(::signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC));
    if (!sig) return Error::from_errno(errno, "signalfd");
    return {};
  }

  // Adopt the directory and every topic that validates; remove what does not, and segments of this
  // domain that no entry names; create the config's topics that are missing.
  Status adopt_segments() {
    std::string replaced;
    auto d = DirectoryWriter::create_or_adopt(domain, opt.config.segment_mode, &replaced,
                                              opt.config.segment_gid.value_or(static_cast<gid_t>(-1)),
                                              opt.config.max_topics);
    if (!d) return d.error();
    directory.emplace(std::move(d).value());
    if (!replaced.empty())
      spdlog::warn("replaced the topic directory of domain \"{}\": {}", domain, replaced);
    // Owner ids are pids of one pid namespace: a broker in another would take live processes for dead
    // (ESRCH) or dead ones for alive. Refuse rather than guess.
    auto ns = own_pid_namespace();
    if (!ns) return Error(Errc::unavailable, "broker for domain \"" + domain + "\": " + ns.error().message());
    DirectoryShared* ds = directory->shared();
    if (ds->pid_ns_ino == 0) {
      ds->pid_ns_ino = ns->ino;
      ds->pid_ns_dev = ns->dev;
    } else if (ds->pid_ns_ino != ns->ino || ds->pid_ns_dev != ns->dev) {
      const std::uint64_t theirs = ds->pid_ns_ino;
      directory.reset();
      return Error(Errc::unavailable,
                   "domain \"" + domain + "\" was run by a broker in another pid namespace (pid:[" +
                       std::to_string(theirs) + "]; this one is pid:[" + std::to_string(ns->ino) +
                       "]), where the owner ids stamped in its segments name other processes: run the broker "
                       "in that namespace, or remove the domain's topics with `shmbus stop --purge`");
    }
    chown_segment(directory_segment_name(domain),
                  opt.config.segment_gid);  // an adopted one may predate the config
    // Relaxed: who runs the domain is informational (status, debugging); no reader synchronises on it.
    directory->shared()->broker_owner.store(OwnerId::self().value, std::memory_order_relaxed);

    std::size_t adopted = 0;
    std::size_t removed = 0;
    for (const TopicInfo& info : directory->list()) {
      auto h = TopicHandle::open(domain, info.id);
      std::string why;
      if (!h)
        why = h.error().message();
      else if (h->name() != info.name || h->kind() != info.kind)
        why = "its segment names topic " + in_quotes(h->name()) + " of kind " + to_string(h->kind());
      if (!why.empty()) {
        spdlog::warn("removing topic {} (id {}): {}", in_quotes(info.name), info.id, why);
        directory->remove(info.name);
        (void)TopicHandle::remove(domain, info.id);
        ++removed;
        continue;
      }
      Topic t{std::move(h).value(), info.name};
      t.handle.repair_waiters();
      if (t.handle.kind() == TopicKind::stream)
        if (const std::uint32_t fixed = detail::StreamSupervisor(t.handle).adopt(); fixed != 0)
          spdlog::warn(
              "topic {}: {} connection table entr(y/ies) disagreed with the connections (a broker died "
              "between the two): repaired",
              in_quotes(info.name), fixed);
      reclaim_dead(t, "adopting the topic");
      by_name[info.name] = info.id;
      topics.emplace(info.id, std::move(t));
      ++adopted;
    }
    removed += remove_orphan_segments();
    if (adopted != 0 || removed != 0)
      spdlog::info("domain \"{}\": adopted {} topic(s), removed {} invalid or orphaned segment(s)", domain,
                   adopted, removed);

    for (const TopicSpec& spec : opt.config.topics) {
      if (auto it = by_name.find(spec.name); it != by_name.end()) {
        const Topic& t = topics.at(it->second);
        if (t.handle.kind() != spec.options.kind)
          spdlog::warn(
              "topic {} exists as a {}; the config asks for a {}: keeping the existing one (delete it to "
              "recreate it)",
              in_quotes(spec.name), to_string(t.handle.kind()), to_string(spec.options.kind));
        continue;
      }
      TopicOptions o = spec.options;
      o.mode = opt.config.segment_mode;
      if (auto r = create_topic(spec.name, o); !r) return r.error();
    }
    return {};
  }

  // /dev/shm/shmbus.<domain>.<id> with no directory entry: left by a broker killed between creating a
  // segment and recording it, or by a directory that was replaced.
  std::size_t remove_orphan_segments() {
    const std::string prefix = domain + ".";
    std::size_t n = 0;
    std::vector<std::uint64_t> orphans;
    for (const std::string& name : domain_segments(domain)) {
      const std::string rest = name.substr(prefix.size());
      if (rest == "dir") continue;
      const std::uint64_t id = std::stoull(rest);
      if (!topics.contains(id)) orphans.push_back(id);
    }
    for (std::uint64_t id : orphans) {
      spdlog::warn("removing segment {} of domain \"{}\": no directory entry names it",
                   topic_segment_name(domain, id), domain);
      if (TopicHandle::remove(domain, id)) ++n;
    }
    return n;
  }

  Status listen_socket() {
    sockaddr_un addr{};
    if (sock_path.size() >= sizeof addr.sun_path)
      return Error(Errc::invalid_argument,
                   "socket path " + in_quotes(sock_path) +
                       " is too long for a Unix socket (set a shorter SHMBUS_RUNTIME_DIR)");
    ::unlink(sock_path.c_str());  // a stale socket of a dead broker: we hold the lock
    listen = Fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!listen) return Error::from_errno(errno, "socket");
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, sock_path.c_str(), sock_path.size() + 1);
    if (::bind(listen.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
      return Error::from_errno(errno, "bind " + sock_path);
    listening = true;
    // Connecting needs write permission on the socket: give it the segments' read/write bits.
    const unsigned mode = opt.config.segment_mode & 0666;
    if (::chmod(sock_path.c_str(), mode) != 0) return Error::from_errno(errno, "chmod " + sock_path);
    if (opt.config.segment_gid) {
      if (::chown(sock_path.c_str(), static_cast<uid_t>(-1), *opt.config.segment_gid) != 0 ||
          ::chown(dir.c_str(), static_cast<uid_t>(-1), *opt.config.segment_gid) != 0)
        return Error::from_errno(errno, "cannot give " + dir + " to group " + *opt.config.segment_group);
    }
    // Others than the owner reach the socket through the domain directory; clients also create files
    // there (paths.cpp wants it writable), so grant rwx to whoever the mode grants anything.
    if (mode & 0066) {
      const mode_t dmode = 0700 | ((mode & 0060) ? 0070 : 0) | ((mode & 0006) ? 0007 : 0);
      if (::chmod(dir.c_str(), dmode) != 0) return Error::from_errno(errno, "chmod " + dir);
    }
    if (::listen(listen.get(), 128) != 0) return Error::from_errno(errno, "listen on " + sock_path);
    return {};
  }

  Status make_loop() {
    ep = Fd(::epoll_create1(EPOLL_CLOEXEC));
    if (!ep) return Error::from_errno(errno, "epoll_create1");
    timer = Fd(::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
    if (!timer) return Error::from_errno(errno, "timerfd_create");
    const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(opt.tick).count();
    itimerspec its{};
    its.it_interval.tv_sec = ns / 1'000'000'000;
    its.it_interval.tv_nsec = ns % 1'000'000'000;
    its.it_value = its.it_interval;
    if (::timerfd_settime(timer.get(), 0, &its, nullptr) != 0)
      return Error::from_errno(errno, "timerfd_settime");
    if (!watch(listen.get(), EPOLLIN, tag(Tag::listen)) || !watch(sig.get(), EPOLLIN, tag(Tag::signal)) ||
        !watch(timer.get(), EPOLLIN, tag(Tag::timer)))
      return Error::from_errno(errno, "epoll_ctl");
    return {};
  }

  bool watch(int fd, std::uint32_t events, std::uint64_t data) {
    epoll_event ev{};
    ev.events = events;
    ev.data.u64 = data;
    return ::epoll_ctl(ep.get(), EPOLL_CTL_ADD, fd, &ev) == 0;
  }

  // ---- topics ----

  Result<Topic*> create_topic(const std::string& name, const TopicOptions& requested) {
    TopicOptions o = requested;
    o.group = opt.config.segment_gid.value_or(static_cast<gid_t>(-1));  // set at creation, no window
    auto id = directory->add(name, o.kind);
    if (!id) return id.error();
    auto h = TopicHandle::create(domain, *id, name, o);
    if (!h && h.error().code() == Errc::already_exists) {
      // A segment with this id outlived its entry (the directory was replaced meanwhile): it is not ours.
      (void)TopicHandle::remove(domain, *id);
      h = TopicHandle::create(domain, *id, name, o);
    }
    if (!h) {
      directory->remove(name);
      return h.error();
    }
    by_name[name] = *id;
    auto [it, inserted] = topics.emplace(*id, Topic{std::move(h).value(), name});
    spdlog::info("created topic {} (id {}, {}, depth {}, max size {})", in_quotes(name), *id,
                 to_string(o.kind), it->second.handle.shared()->depth, o.max_size);
    return &it->second;
  }

  Topic* find_topic(std::string_view name) {
    auto it = by_name.find(name);
    return it == by_name.end() ? nullptr : &topics.at(it->second);
  }

  Topic& need_topic(std::string_view name) {
    if (Topic* t = find_topic(name)) return *t;
    throw BadRequest{Error(Errc::not_found, "topic " + in_quotes(name) +
                                                " does not exist (create it with `shmbus topic create " +
                                                std::string(name) + " --kind stream|queue`)")};
  }

  // Reclaim whatever processes named in `t` held that no longer run.
  void reclaim_dead(Topic& t, const char* when) {
    std::vector<OwnerId> unknown;
    const auto dead_ids = t.handle.dead_owners(&unknown);
    const auto now = Clock::now();
    for (OwnerId u : unknown) {
      // Never reclaimed: without proof of death its chunks may be in use. Said once a minute per owner.
      auto [it, fresh] = unknown_warned.try_emplace(u.value, now);
      if (!fresh && now - it->second < std::chrono::seconds(60)) continue;
      it->second = now;
      spdlog::warn(
          "topic {}: cannot tell whether process {} runs (its /proc entry is unreadable to the "
          "broker); what it holds stays with it",
          in_quotes(t.name), u.pid());
    }
    for (OwnerId dead : dead_ids) {
      const ReclaimReport r = t.handle.reclaim(dead);
      const std::uint32_t ports =
          t.handle.kind() == TopicKind::stream ? detail::StreamSupervisor(t.handle).on_death(dead) : 0;
      // dead_owners() also names the last pusher of chunks that sit complete in a ring; reclaiming those
      // finds nothing to do, and is not worth a line at info every second.
      if (r.freed != 0 || r.redelivered != 0 || ports != 0)
        spdlog::info(
            "topic {}: process {} is gone ({}): {} chunk(s) freed, {} redelivered, {} port(s) released",
            in_quotes(t.name), dead.pid(), when, r.freed, r.redelivered, ports);
      else
        spdlog::trace("topic {}: process {} is gone ({}): nothing to reclaim", in_quotes(t.name), dead.pid(),
                      when);
    }
  }

  // Active subscriber slots that no connection holds: adopted from a previous broker and not claimed back
  // by their (live) owners. Dead owners' slots are reclaim_dead()'s. Publisher slots of live processes
  // stay: they hold no one up, and their owners reattach when they reconnect.
  void free_unclaimed_slots() {
    for (auto& [id, t] : topics) {
      if (t.handle.kind() != TopicKind::stream) continue;
      detail::StreamSupervisor sup(t.handle);
      for (std::uint32_t j = 0; j < t.handle.max_subscribers(); ++j) {
        const SubscriberSlot* slot = t.handle.slot(j);
        if (slot->state.load(std::memory_order_relaxed) != kSlotActive) continue;
        const bool claimed = std::any_of(sessions.begin(), sessions.end(), [&](const auto& kv) {
          return std::any_of(kv.second->slots.begin(), kv.second->slots.end(), [&](const SlotRecord& r) {
            return r.topic_id == id && r.slot == j && !r.publisher;
          });
        });
        if (claimed) continue;
        const OwnerId owner{slot->owner.load(std::memory_order_relaxed)};
        spdlog::warn(
            "topic {}: closed subscriber slot {}: its owner (pid {}) did not claim it back within {} s of "
            "this "
            "broker's start; if it comes back, it subscribes anew and is told how many messages it missed",
            in_quotes(t.name), j, owner.pid(),
            std::chrono::duration_cast<std::chrono::seconds>(kClaimGrace).count());
        sup.close_subscriber(j, false);
      }
    }
  }

  // ---- clients ----

  std::size_t connected_clients() const {
    return static_cast<std::size_t>(std::count_if(sessions.begin(), sessions.end(),
                                                  [](const auto& kv) { return !kv.second->linger_until; }));
  }

  void accept_clients() {
    for (;;) {
      Fd fd(::accept4(listen.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
      if (!fd) {
        if (errno == EINTR || errno == ECONNABORTED) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) spdlog::warn("accept: {}", std::strerror(errno));
        return;
      }
      ucred cred{};
      socklen_t len = sizeof cred;
      if (::getsockopt(fd.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
        spdlog::warn("SO_PEERCRED: {}; dropping the connection", std::strerror(errno));
        continue;
      }
      if (connected_clients() >= opt.config.max_clients) {
        const std::string msg = "the broker serves its limit of " + std::to_string(opt.config.max_clients) +
                                " clients ([limits] max_clients)";
        spdlog::warn("refusing client pid {}: {}", cred.pid, msg);
        send_now(fd.get(), control::error_reply(Error(Errc::no_space, msg)));
        continue;
      }
      if (cred.pid <= 0) {
        // The client's pid namespace is not visible from ours (a sibling container, or the host while
        // the broker runs in a container): we could neither watch it nor prove its death.
        const std::string msg =
            "the broker cannot see this process (SO_PEERCRED gives pid 0: it runs in a pid namespace that "
            "is not the broker's or below it); run the broker in this process's pid namespace or an "
            "ancestor of it";
        spdlog::warn("refusing a client of uid {}: {}", cred.uid, msg);
        send_now(fd.get(), control::error_reply(Error(Errc::unavailable, msg)));
        continue;
      }
      Fd pidfd(pidfd_open(cred.pid));
      if (!pidfd) {
        const int err = errno;
        if (err == ESRCH) {
          spdlog::debug("client pid {} left before it was registered", cred.pid);
        } else {
          const std::string msg = std::string("the broker cannot watch this process (pidfd_open: ") +
                                  std::strerror(err) + "); try again";
          spdlog::warn("refusing client pid {}: {}", cred.pid, msg);
          send_now(fd.get(), control::error_reply(Error(Errc::unavailable, msg)));
        }
        continue;
      }
      int err = 0;
      const auto start = read_start_time(cred.pid, &err);
      if (!start) {
        pollfd pf{pidfd.get(), POLLIN, 0};
        if (::poll(&pf, 1, 0) == 1) {
          spdlog::debug("client pid {} left before it was registered", cred.pid);
          continue;
        }
        const std::string msg = "the broker cannot read /proc/" + std::to_string(cred.pid) + "/stat (" +
                                std::strerror(err) + "), which it needs to identify the client; try again";
        spdlog::warn("refusing client pid {}: {}", cred.pid, msg);
        send_now(fd.get(), control::error_reply(Error(Errc::unavailable, msg)));
        continue;
      }
      const std::optional<OwnerId> owner = OwnerId::make(cred.pid, static_cast<std::uint32_t>(*start));
      auto s = std::make_unique<Session>();
      s->id = next_session++;
      s->pid = cred.pid;
      s->uid = cred.uid;
      s->gid = cred.gid;
      s->owner = *owner;
      if (!watch(fd.get(), EPOLLIN | EPOLLRDHUP, tag(Tag::conn, s->id)) ||
          !watch(pidfd.get(), EPOLLIN, tag(Tag::pidfd, s->id))) {
        spdlog::warn("epoll_ctl for client pid {}: {}", cred.pid, std::strerror(errno));
        continue;
      }
      s->sock = std::move(fd);
      s->pidfd = std::move(pidfd);
      spdlog::debug("client pid {} uid {} connected (session {})", s->pid, s->uid, s->id);
      sessions.emplace(s->id, std::move(s));
    }
  }

  // One frame, written at once on a socket that has nothing pending (refusals before a session exists).
  static void send_now(int fd, const json& message) {
    const std::string body = message.dump(-1, ' ', false, json::error_handler_t::replace);
    std::string frame = encode(body);
    (void)::send(fd, frame.data(), frame.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
  }

  static std::string encode(const std::string& body) {
    std::string frame(4 + body.size(), '\0');
    const auto n = static_cast<std::uint32_t>(body.size());
    for (int i = 0; i < 4; ++i) frame[i] = static_cast<char>((n >> (8 * i)) & 0xff);
    std::memcpy(frame.data() + 4, body.data(), body.size());
    return frame;
  }

  // Queue a reply and write what the socket takes now; the rest goes out on EPOLLOUT.
  void reply(Session& s, const json& message) {
    std::string body = message.dump(-1, ' ', false, json::error_handler_t::replace);
    if (body.size() > control::kMaxReplyFrame)
      body = control::error_reply(Error(Errc::too_large, "the reply is " + std::to_string(body.size()) +
                                                             " bytes, over the reply frame limit of " +
                                                             std::to_string(control::kMaxReplyFrame)))
                 .dump();
    s.wbuf += encode(body);
    flush(s);
  }

  // False when the connection failed (the caller closes it).
  bool flush(Session& s) {
    while (!s.wbuf.empty()) {
      const ssize_t k = ::send(s.sock.get(), s.wbuf.data(), s.wbuf.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      if (k < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) break;
        return false;
      }
      s.wbuf.erase(0, static_cast<std::size_t>(k));
    }
    const bool want = !s.wbuf.empty();
    if (want != s.epollout && s.sock) {
      epoll_event ev{};
      ev.events = EPOLLIN | EPOLLRDHUP | (want ? EPOLLOUT : 0u);
      ev.data.u64 = tag(Tag::conn, s.id);
      ::epoll_ctl(ep.get(), EPOLL_CTL_MOD, s.sock.get(), &ev);
      s.epollout = want;
    }
    return s.wbuf.size() <= kMaxPendingWrite;
  }

  void on_conn_event(std::uint64_t id, std::uint32_t events) {
    auto it = sessions.find(id);
    if (it == sessions.end() || !it->second->sock) return;
    Session& s = *it->second;
    if ((events & EPOLLOUT) && !flush(s)) return close_session(s, "its connection failed");
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) read_from(s);
  }

  void read_from(Session& s) {
    const std::uint64_t id = s.id;
    char buf[16384];
    for (;;) {
      const ssize_t k = ::recv(s.sock.get(), buf, sizeof buf, MSG_DONTWAIT);
      if (k > 0) {
        s.rbuf.append(buf, static_cast<std::size_t>(k));
        if (!process_frames(s)) return;  // s is closed
        if (!sessions.contains(id) || !s.sock) return;
        continue;
      }
      if (k < 0 && errno == EINTR) continue;
      if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
      return close_session(s, k == 0 ? "it closed its connection" : "its connection failed");
    }
  }

  // Parse every complete frame in s.rbuf. False once the session was closed for a protocol error.
  bool process_frames(Session& s) {
    std::size_t off = 0;
    bool open = true;
    while (open && s.rbuf.size() - off >= 4) {
      const auto* p = reinterpret_cast<const unsigned char*>(s.rbuf.data() + off);
      const std::uint32_t n = p[0] | (p[1] << 8) | (p[2] << 16) | (static_cast<std::uint32_t>(p[3]) << 24);
      if (n > control::kMaxFrame) {
        protocol_failure(s,
                         Error(Errc::too_large, "control frame of " + std::to_string(n) + " bytes exceeds " +
                                                    std::to_string(control::kMaxFrame)));
        return false;
      }
      if (s.rbuf.size() - off < 4 + std::size_t{n}) break;
      json msg = json::parse(s.rbuf.begin() + static_cast<std::ptrdiff_t>(off + 4),
                             s.rbuf.begin() + static_cast<std::ptrdiff_t>(off + 4 + n), nullptr, false);
      off += 4 + n;
      if (msg.is_discarded() || !msg.is_object()) {
        protocol_failure(s, Error(Errc::protocol_error, "control frame is not a JSON object"));
        return false;
      }
      open = dispatch(s, msg);
      if (open && s.wbuf.size() > kMaxPendingWrite) {
        protocol_failure(
            s, Error(Errc::protocol_error,
                     "it does not read its replies (" + std::to_string(s.wbuf.size()) + " bytes pending)"));
        return false;
      }
    }
    if (!open) return false;
    s.rbuf.erase(0, off);
    return true;
  }

  // Answer with an error and drop the connection; the broker itself carries on.
  void protocol_failure(Session& s, const Error& e, const json* req = nullptr) {
    spdlog::warn("{}: {}; disconnecting it", s.who(), e.message());
    json answer = control::error_reply(e);
    if (req != nullptr) echo_id(*req, answer);
    reply(s, answer);
    close_session(s, "of a protocol error");
  }

  // Every reply carries the request's req_id, so a client tells a late answer from the one it waits for.
  static void echo_id(const json& req, json& answer) {
    if (auto rid = req.find("req_id"); rid != req.end() && rid->is_number_unsigned()) answer["req_id"] = *rid;
  }

  // Handle one request. False when the session was closed.
  bool dispatch(Session& s, const json& req) {
    auto op_it = req.find("op");
    if (op_it == req.end() || !op_it->is_string()) {
      protocol_failure(s, Error(Errc::protocol_error, "control frame without \"op\""), &req);
      return false;
    }
    const std::string op = op_it->get<std::string>();
    if (!s.hello) {
      if (op != "hello") {
        protocol_failure(
            s, Error(Errc::protocol_error, "the first request must be \"hello\", not " + in_quotes(op)),
            &req);
        return false;
      }
      auto v = req.find("version");
      if (v == req.end() || !v->is_number_integer() || v->get<std::int64_t>() != control::kProtocolVersion) {
        protocol_failure(
            s,
            Error(Errc::version_mismatch, "the broker speaks control protocol version " +
                                              std::to_string(control::kProtocolVersion) + ", the client " +
                                              (v == req.end() ? std::string("named none") : v->dump())),
            &req);
        return false;
      }
      if (auto c = req.find("client"); c != req.end() && c->is_string()) {
        s.name = c->get<std::string>().substr(0, kMaxClientName);
        for (char& ch : s.name)  // it goes into log lines
          if (static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f) ch = '?';
      }
      s.hello = true;
      spdlog::debug("{} registered (uid {}, gid {})", s.who(), s.uid, s.gid);
      json answer = {{"ok", true},
                     {"version", control::kProtocolVersion},
                     {"broker_pid", ::getpid()},
                     {"domain", domain},
                     {"pid", s.pid},                // this client, as the broker sees it
                     {"identity", s.owner.value}};  // what it stamps on shared memory (owner.hpp)
      echo_id(req, answer);
      reply(s, answer);
      return sessions.contains(s.id) && s.sock;
    }
    json answer;
    try {
      answer = handle(s, op, req);
    } catch (const BadRequest& e) {
      answer = control::error_reply(e.error);
    }
    echo_id(req, answer);
    reply(s, answer);
    return true;
  }

  json handle(Session& s, const std::string& op, const json& req) {
    if (op == "status") return status_json();
    if (op == "topics") {
      json list = json::array();
      for (auto& [id, t] : topics) list.push_back(topic_stats(t.handle));
      return {{"ok", true}, {"topics", std::move(list)}};
    }
    if (op == "topic_create") return op_topic_create(req);
    if (op == "topic_delete") return op_topic_delete(req);
    if (op == "subscribe") return op_subscribe(s, req);
    if (op == "unsubscribe") return op_release(s, req, false);
    if (op == "reattach") return op_reattach(s, req, false);
    if (op == "publisher") return op_publisher(s, req);
    if (op == "unpublish") return op_release(s, req, true);
    if (op == "reattach_publisher") return op_reattach(s, req, true);
    if (op == "stop") {
      bool purge_now = false;
      if (auto p = req.find("purge"); p != req.end() && !p->is_null()) {
        if (!p->is_boolean())
          throw BadRequest{Error(Errc::invalid_argument, "\"purge\" must be true or false")};
        purge_now = p->get<bool>();
      }
      spdlog::info("{} asked the broker to stop{}", s.who(),
                   purge_now ? " and purge the domain's segments" : "");
      purge = purge || purge_now;
      stop_requested = true;
      return {{"ok", true}, {"purge", purge}};
    }
    if (op == "hello")
      throw BadRequest{Error(Errc::protocol_error, "\"hello\" was already sent on this connection")};
    throw BadRequest{Error(Errc::protocol_error, "unknown op " + in_quotes(op))};
  }

  json status_json() const {
    const double uptime = std::chrono::duration<double>(Clock::now() - started).count();
    return {{"ok", true},
            {"pid", ::getpid()},
            {"domain", domain},
            {"uptime_s", uptime},
            {"clients", connected_clients()},
            {"topics", topics.size()},
            {"autostart", opt.autostart},
            {"runtime_dir", runtime_dir}};
  }

  json op_topic_create(const json& req) {
    const std::string name = req_string(req, "name");
    if (auto st = check_topic_name(name); !st) throw BadRequest{st.error()};
    TopicOptions o = opt.config.defaults;
    o.mode = opt.config.segment_mode;
    if (auto k = req.find("kind"); k != req.end() && !k->is_null()) {
      const auto kind = k->is_string() ? parse_kind(k->get<std::string>()) : std::nullopt;
      if (!kind) throw BadRequest{Error(Errc::invalid_argument, "\"kind\" must be \"stream\" or \"queue\"")};
      o.kind = *kind;
    }
    if (auto v = req.find("overflow"); v != req.end() && !v->is_null()) {
      const auto ov = v->is_string() ? parse_overflow(v->get<std::string>()) : std::nullopt;
      if (!ov)
        throw BadRequest{Error(Errc::invalid_argument, "\"overflow\" must be \"drop-oldest\" or \"block\"")};
      o.overflow = *ov;
    }
    if (auto v = opt_uint(req, "depth")) o.depth = *v;
    if (auto v = opt_uint(req, "max_size")) o.max_size = *v;
    for (auto [key, field] : {std::pair<const char*, std::uint32_t*>{"max_subscribers", &o.max_subscribers},
                              {"max_publishers", &o.max_publishers},
                              {"attrs_max", &o.attrs_max}})
      if (auto v = opt_uint(req, key)) {
        if (*v > 0xffffffffULL)
          throw BadRequest{
              Error(Errc::invalid_argument, std::string(key) + " " + std::to_string(*v) + " is too large")};
        *field = static_cast<std::uint32_t>(*v);
      }
    if (auto st = check_topic_options(o); !st) throw BadRequest{st.error()};
    if (find_topic(name))
      throw BadRequest{Error(Errc::already_exists, "topic " + in_quotes(name) + " already exists")};
    if (topics.size() >= opt.config.max_topics)
      throw BadRequest{Error(Errc::no_space, "the domain holds its limit of " +
                                                 std::to_string(opt.config.max_topics) +
                                                 " topics ([limits] max_topics)")};
    auto t = create_topic(name, o);
    if (!t) throw BadRequest{t.error()};
    return {{"ok", true}, {"topic", topic_stats((*t)->handle)}};
  }

  json op_topic_delete(const json& req) {
    const std::string name = req_string(req, "name");
    Topic& t = need_topic(name);
    const std::uint64_t id = t.handle.shared()->topic_id;
    for (auto& [sid, s] : sessions)
      std::erase_if(s->slots, [id](const SlotRecord& r) { return r.topic_id == id; });
    t.handle.mark_deleted();  // ports that map it fail from now on
    directory->remove(name);
    by_name.erase(name);
    topics.erase(id);
    if (auto st = TopicHandle::remove(domain, id); !st)
      spdlog::warn("topic {}: removing segment: {}", in_quotes(name), st.error().message());
    spdlog::info("deleted topic {} (id {})", in_quotes(name), id);
    return {{"ok", true}, {"name", name}};
  }

  Topic& need_stream(const json& req) {
    Topic& t = need_topic(req_string(req, "name"));
    if (t.handle.kind() != TopicKind::stream)
      throw BadRequest{Error(Errc::invalid_argument, "topic " + in_quotes(t.name) +
                                                         " is a queue: produce to it and consume from it")};
    return t;
  }

  static json slot_reply(const Topic& t, std::uint32_t slot, std::uint64_t port) {
    return {
        {"ok", true}, {"name", t.name}, {"id", t.handle.shared()->topic_id}, {"slot", slot}, {"port", port}};
  }

  void remember(Session& s, std::uint64_t id, std::uint32_t slot, std::uint64_t port, bool publisher) {
    if (std::none_of(s.slots.begin(), s.slots.end(), [&](const SlotRecord& r) {
          return r.topic_id == id && r.slot == slot && r.publisher == publisher;
        }))
      s.slots.push_back({id, slot, port, publisher});
  }

  json op_subscribe(Session& s, const json& req) {
    Topic& t = need_stream(req);
    const std::uint64_t port = opt_uint(req, "port").value_or(0);
    // Idempotent: a retried subscribe (same process, same port) gets the slot it has already.
    auto slot = detail::StreamSupervisor(t.handle).attach_subscriber(s.owner, port);
    if (!slot) throw BadRequest{slot.error()};
    remember(s, t.handle.shared()->topic_id, *slot, port, false);
    spdlog::debug("{} subscribed to {} (slot {})", s.who(), in_quotes(t.name), *slot);
    return slot_reply(t, *slot, port);
  }

  json op_publisher(Session& s, const json& req) {
    Topic& t = need_stream(req);
    const std::uint64_t port = opt_uint(req, "port").value_or(0);
    const std::uint64_t pub_id =
        opt_uint(req, "pub_id").value_or((static_cast<std::uint64_t>(s.owner.pid()) << 32) | port);
    auto slot = detail::StreamSupervisor(t.handle).attach_publisher(s.owner, port, pub_id);
    if (!slot) throw BadRequest{slot.error()};
    remember(s, t.handle.shared()->topic_id, *slot, port, true);
    spdlog::debug("{} publishes to {} (slot {})", s.who(), in_quotes(t.name), *slot);
    return slot_reply(t, *slot, port);
  }

  // unsubscribe / unpublish: the slot named by "slot", or by "port" (what a client sends after its
  // request timed out: the broker may still have granted it). This process's own slots only.
  json op_release(Session& s, const json& req, bool publisher) {
    Topic& t = need_stream(req);
    const std::optional<std::uint64_t> slot = opt_uint(req, "slot");
    const std::optional<std::uint64_t> port = opt_uint(req, "port");
    if (!slot && !port)
      throw BadRequest{Error(Errc::invalid_argument, "this request needs \"slot\" or \"port\" (an integer)")};
    detail::StreamSupervisor sup(t.handle);
    const std::uint64_t id = t.handle.shared()->topic_id;
    std::optional<std::uint32_t> mine;
    if (port) mine = publisher ? sup.find_publisher(s.owner, *port) : sup.find_subscriber(s.owner, *port);
    if (mine && slot && *mine != *slot) mine.reset();
    if (!mine && slot && *slot < (publisher ? t.handle.max_publishers() : t.handle.max_subscribers())) {
      const bool owned =
          publisher
              ? t.handle.stream().pubs[*slot].owner.load(std::memory_order_relaxed) == s.owner.value &&
                    t.handle.stream().pubs[*slot].state.load(std::memory_order_relaxed) == detail::kPubActive
              : t.handle.slot(static_cast<std::uint32_t>(*slot))->owner.load(std::memory_order_relaxed) ==
                        s.owner.value &&
                    t.handle.slot(static_cast<std::uint32_t>(*slot))->state.load(std::memory_order_relaxed) ==
                        kSlotActive;
      if (owned) mine = static_cast<std::uint32_t>(*slot);
    }
    if (!mine)
      throw BadRequest{
          Error(Errc::not_found,
                std::string("this process holds no ") + (publisher ? "publisher" : "subscriber") + " slot " +
                    (slot ? std::to_string(*slot) : "for port " + std::to_string(port.value_or(0))) +
                    " of topic " + in_quotes(t.name))};
    if (publisher)
      sup.retire_publisher(*mine);
    else
      sup.close_subscriber(*mine, true);  // it asked: it reads no more
    stream_departure();
    std::erase_if(s.slots, [&](const SlotRecord& r) {
      return r.topic_id == id && r.slot == *mine && r.publisher == publisher;
    });
    spdlog::debug("{} {} {} (slot {})", s.who(), publisher ? "stopped publishing to" : "unsubscribed from",
                  in_quotes(t.name), *mine);
    return {{"ok", true}, {"name", t.name}, {"slot", *mine}};
  }

  json op_reattach(Session& s, const json& req, bool publisher) {
    Topic& t = need_stream(req);
    const std::uint64_t want_id = req_uint(req, "id");
    const std::uint64_t slot = req_uint(req, "slot");
    const std::uint64_t port = opt_uint(req, "port").value_or(0);
    const std::uint64_t id = t.handle.shared()->topic_id;
    if (want_id != id)
      throw BadRequest{Error(Errc::not_found, "topic " + in_quotes(t.name) + " has id " + std::to_string(id) +
                                                  ", not " + std::to_string(want_id) +
                                                  " (it was deleted and created again): subscribe again")};
    if (slot > 0xffffffffULL)
      throw BadRequest{Error(Errc::invalid_argument, "no such slot " + std::to_string(slot))};
    detail::StreamSupervisor sup(t.handle);
    const Status st = publisher ? sup.reattach_publisher(static_cast<std::uint32_t>(slot), s.owner, port)
                                : sup.reattach_subscriber(static_cast<std::uint32_t>(slot), s.owner, port);
    if (!st) throw BadRequest{st.error()};
    remember(s, id, static_cast<std::uint32_t>(slot), port, publisher);
    spdlog::debug("{} reattached to {} ({} slot {})", s.who(), in_quotes(t.name),
                  publisher ? "publisher" : "subscriber", slot);
    return slot_reply(t, static_cast<std::uint32_t>(slot), port);
  }

  // The socket closed or failed: free the session's slots, and find out whether the process is gone.
  void close_session(Session& s, const char* why) {
    if (s.sock) {
      ::epoll_ctl(ep.get(), EPOLL_CTL_DEL, s.sock.get(), nullptr);
      s.sock.reset();
    }
    // Its subscribers stop being fed (their connections close, and their chunks go back once they acked
    // that or died); if the process lives on, its client reconnects and subscribes anew. Publisher slots
    // stay: they hold no one up, and a client that reconnects takes them back.
    std::size_t freed = 0;
    for (const SlotRecord& r : s.slots)
      if (auto it = topics.find(r.topic_id);
          it != topics.end() && !r.publisher &&
          it->second.handle.slot(r.slot)->owner.load(std::memory_order_relaxed) == s.owner.value) {
        detail::StreamSupervisor(it->second.handle).close_subscriber(r.slot, false);
        ++freed;
      }
    s.slots_freed += freed;
    s.slots.clear();
    if (freed != 0) stream_departure();
    pollfd pf{s.pidfd.get(), POLLIN, 0};
    if (::poll(&pf, 1, 0) == 1) return on_death(s);
    spdlog::debug("{} disconnected: {}{}", s.who(), why,
                  freed != 0 ? fmt::format("; freed {} subscriber slot(s)", freed) : "");
    s.linger_until = Clock::now() + kLinger;
    if (connected_clients() == 0) idle_since = Clock::now();
  }

  // The client's process is gone: reclaim what it held in every topic.
  void on_death(Session& s) {
    if (s.sock) {
      ::epoll_ctl(ep.get(), EPOLL_CTL_DEL, s.sock.get(), nullptr);
      s.sock.reset();
    }
    std::uint64_t freed = 0;
    std::uint64_t redelivered = 0;
    std::uint64_t slots = s.slots_freed;  // freed already if its socket closed first
    for (auto& [id, t] : topics) {
      const ReclaimReport r = t.handle.reclaim(s.owner);
      freed += r.freed;
      redelivered += r.redelivered;
      if (t.handle.kind() == TopicKind::stream) slots += detail::StreamSupervisor(t.handle).on_death(s.owner);
    }
    if (slots != 0) stream_departure();
    std::uint64_t held = 0;
    for (auto& [id, t] : topics) held += t.handle.held();
    // Every exit, with what it left: a clean one reclaims nothing, a crash shows what came back.
    spdlog::info(
        "{} exited: reclaimed {} chunk(s) to the pools, redelivered {} queue message(s), released {} "
        "port(s){}",
        s.who(), freed, redelivered, slots,
        held != 0 ? fmt::format("; {} message(s) wait to be redelivered", held) : std::string());
    ::epoll_ctl(ep.get(), EPOLL_CTL_DEL, s.pidfd.get(), nullptr);
    const std::uint64_t id = s.id;
    sessions.erase(id);  // s is gone
    if (connected_clients() == 0) idle_since = Clock::now();
  }

  void on_pidfd_event(std::uint64_t id) {
    auto it = sessions.find(id);
    if (it != sessions.end()) on_death(*it->second);
  }

  // ---- periodic work ----

  // Finish what departed stream ports left (closing connections, retired publishers' chunks). While work
  // is left, the loop sweeps again after `resweep_in` (1 ms after a departure, doubling up to a tick), so
  // that a dead subscriber's chunks are back with their publisher in about a millisecond, not a tick.
  void sweep_streams() {
    bool pending = false;
    for (auto& [id, t] : topics) {
      if (t.handle.kind() != TopicKind::stream) continue;
      const detail::StreamSweep sw = detail::StreamSupervisor(t.handle).sweep();
      pending = pending || sw.pending;
      if (sw.chunks_returned != 0 || sw.chunks_freed != 0 || sw.slots_freed != 0)
        spdlog::debug(
            "topic {}: gave back {} chunk(s) of departed subscribers, freed {} chunk(s) of departed "
            "publishers, {} connection(s) and {} slot(s)",
            in_quotes(t.name), sw.chunks_returned, sw.chunks_freed, sw.conns_freed, sw.slots_freed);
    }
    const auto tick_ms = std::chrono::duration_cast<std::chrono::milliseconds>(opt.tick);
    resweep_in = !pending ? std::chrono::milliseconds(0)
                          : std::clamp(resweep_in * 2, std::chrono::milliseconds(1), tick_ms);
    resweep_at = Clock::now() + resweep_in;
  }
  // A port departed: sweep now and soon after.
  void stream_departure() {
    resweep_in = std::chrono::milliseconds(0);
    sweep_streams();
  }

  void on_tick() {
    std::uint64_t expirations = 0;
    while (::read(timer.get(), &expirations, sizeof expirations) > 0) {
    }
    ++ticks;
    sweep_streams();
    for (auto& [id, t] : topics) {
      if (t.handle.kind() == TopicKind::stream) continue;
      if (const std::uint64_t requeued = t.handle.retry_held(); requeued != 0)
        spdlog::info("topic {}: redelivered {} held message(s) ({} still held)", in_quotes(t.name), requeued,
                     t.handle.held());
    }
    if (ticks % kSweepEveryTicks == 0)
      for (auto& [id, t] : topics) reclaim_dead(t, "found by the periodic sweep");
    const auto now = Clock::now();
    if (!unclaimed_swept && now - started >= kClaimGrace) {
      unclaimed_swept = true;
      free_unclaimed_slots();
    }
    for (auto it = sessions.begin(); it != sessions.end();) {
      Session& s = *it->second;
      if (s.linger_until && *s.linger_until <= now) {
        ::epoll_ctl(ep.get(), EPOLL_CTL_DEL, s.pidfd.get(), nullptr);
        it = sessions.erase(it);
      } else {
        ++it;
      }
    }
    if (opt.autostart && connected_clients() == 0 && now - idle_since >= std::chrono::seconds(idle_exit_s)) {
      spdlog::info("no clients for {} s: the autostarted broker exits", idle_exit_s);
      stop_requested = true;
    }
  }

  void on_signal() {
    signalfd_siginfo si{};
    while (::read(sig.get(), &si, sizeof si) == static_cast<ssize_t>(sizeof si)) {
      spdlog::info("{} received: shutting down", strsignal(static_cast<int>(si.ssi_signo)));
      stop_requested = true;
    }
  }

  int run() {
    epoll_event events[64];
    while (!stop_requested) {
      int wait_ms = -1;
      if (resweep_in.count() != 0)
        wait_ms = static_cast<int>(std::max<std::int64_t>(
            0, std::chrono::ceil<std::chrono::milliseconds>(resweep_at - Clock::now()).count()));
      const int n = ::epoll_wait(ep.get(), events, 64, wait_ms);
      if (n < 0) {
        if (errno == EINTR) continue;
        spdlog::critical("epoll_wait: {}", std::strerror(errno));
        shutdown();
        return 1;
      }
      for (int i = 0; i < n; ++i) {
        const std::uint64_t data = events[i].data.u64;
        switch (tag_of(data)) {
          case Tag::listen:
            accept_clients();
            break;
          case Tag::signal:
            on_signal();
            break;
          case Tag::timer:
            on_tick();
            break;
          case Tag::conn:
            on_conn_event(id_of(data), events[i].events);
            break;
          case Tag::pidfd:
            on_pidfd_event(id_of(data));
            break;
        }
      }
      if (resweep_in.count() != 0 && Clock::now() >= resweep_at) sweep_streams();
    }
    shutdown();
    return 0;
  }

  void shutdown() {
    if (shut_down) return;
    shut_down = true;
    if (listening) {
      listen.reset();
      ::unlink(sock_path.c_str());
    }
    // Best effort: a reply still pending (the "ok" to stop) goes out before the socket closes. Slots stay
    // as they are: a client that keeps running reattaches to the next broker.
    for (auto& [id, s] : sessions)
      if (s->sock && !s->wbuf.empty())
        (void)::send(s->sock.get(), s->wbuf.data(), s->wbuf.size(), MSG_NOSIGNAL);
    sessions.clear();
    if (directory && serving) {
      if (!purge && !opt.purge_on_exit) {
        std::uint64_t queued = 0;
        for (auto& [id, t] : topics) queued += t.handle.queued_messages();
        spdlog::info(
            "keeping {} topic(s) and {} queued message(s) for the next broker (purge with `shmbus "
            "stop --purge`)",
            topics.size(), queued);
        topics.clear();
      } else {
        for (auto& [id, t] : topics) t.handle.mark_deleted();
        topics.clear();
        const std::size_t n = remove_domain_segments(domain);
        if (lock) lock->unlink();
        spdlog::info("purged domain \"{}\": removed {} segment(s)", domain, n);
      }
    }
    directory.reset();
    if (pid_written) ::unlink(pid_path.c_str());
    lock.reset();  // releases the flock (the file stays: see DomainLock)
  }
};

Result<std::unique_ptr<Broker>> Broker::start(BrokerOptions options) {
  auto impl = std::make_unique<Impl>();
  impl->opt = std::move(options);
  // On failure ~Impl unlinks what start() made (socket, pid file) and leaves every segment alone.
  if (auto st = impl->start(); !st) return st.error();
  return std::unique_ptr<Broker>(new Broker(std::move(impl)));
}

Broker::Broker(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Broker::~Broker() = default;
int Broker::run() {
  return impl_->run();
}
const std::string& Broker::domain() const {
  return impl_->domain;
}

}  // namespace shmbus::broker
