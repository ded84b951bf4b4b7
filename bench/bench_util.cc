#include "bench/bench_util.h"

#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"

namespace kvtier::bench {

namespace {

absl::Status Errno(absl::string_view what, int err = errno) {
  return absl::InternalError(absl::StrCat(what, ": ", std::strerror(err)));
}

}  // namespace

int64_t MonoNowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

void SleepUntilNs(int64_t t_ns) {
  timespec ts;
  ts.tv_sec = t_ns / 1000000000;
  ts.tv_nsec = t_ns % 1000000000;
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr) == EINTR) {
  }
}

// ---------------------------------------------------------------------------------------------
// TouchedBuffer, memcpy anchor

absl::StatusOr<std::unique_ptr<TouchedBuffer>> TouchedBuffer::Create(size_t bytes, uint8_t fill) {
  if (bytes == 0) return absl::InvalidArgumentError("empty buffer");
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return Errno(absl::StrCat("mmap ", bytes, " bytes"));
  (void)madvise(p, bytes, MADV_HUGEPAGE);  // a hint; fine if THP is off
  std::memset(p, fill, bytes);
  return std::unique_ptr<TouchedBuffer>(new TouchedBuffer(static_cast<uint8_t*>(p), bytes));
}

TouchedBuffer::~TouchedBuffer() { munmap(data_, size_); }

absl::StatusOr<MemcpyGbps> MeasureMemcpy(size_t bytes, size_t chunk, int reps) {
  if (chunk == 0 || chunk > bytes) chunk = bytes;
  auto src = TouchedBuffer::Create(bytes, 0x11);
  if (!src.ok()) return src.status();
  auto dst = TouchedBuffer::Create(bytes, 0x22);
  if (!dst.ok()) return dst.status();
  uint8_t* const s = (*src)->data();
  uint8_t* const d = (*dst)->data();
  MemcpyGbps best;
  for (int r = 0; r < std::max(reps, 1); ++r) {
    int64_t t0 = MonoNowNs();
    std::memcpy(d, s, bytes);
    int64_t t1 = MonoNowNs();
    best.whole = std::max(best.whole, static_cast<double>(bytes) / static_cast<double>(t1 - t0));
    t0 = MonoNowNs();
    for (size_t off = 0; off < bytes; off += chunk) {
      std::memcpy(d + off, s + off, std::min(chunk, bytes - off));
    }
    t1 = MonoNowNs();
    best.chunked =
        std::max(best.chunked, static_cast<double>(bytes) / static_cast<double>(t1 - t0));
  }
  // Read the result back so the copies cannot be optimised away.
  volatile uint8_t sink = d[bytes - 1];
  (void)sink;
  return best;  // bytes per ns == GB/s
}

absl::StatusOr<uint64_t> MemAvailableBytes() {
  std::ifstream f("/proc/meminfo");
  std::string name, unit;
  uint64_t kib = 0;
  while (f >> name >> kib) {
    std::getline(f, unit);
    if (name == "MemAvailable:") return kib * 1024;
  }
  return absl::UnavailableError("no MemAvailable in /proc/meminfo");
}

// ---------------------------------------------------------------------------------------------
// TempDir

absl::StatusOr<std::unique_ptr<TempDir>> TempDir::Create(absl::string_view prefix) {
  const char* tmp = std::getenv("TMPDIR");
  std::string templ =
      absl::StrCat(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp", "/", prefix, "XXXXXX");
  if (mkdtemp(templ.data()) == nullptr) return Errno(absl::StrCat("mkdtemp ", templ));
  return std::unique_ptr<TempDir>(new TempDir(templ));
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

Progress::Progress(std::string name, double interval_s, std::function<ProgressCounts()> counts,
                   FILE* out)
    : name_(std::move(name)), interval_s_(interval_s), counts_(std::move(counts)), out_(out) {
  if (interval_s_ > 0) thread_ = std::thread([this] { Loop(); });
}

Progress::~Progress() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void Progress::Loop() {
  const int64_t start_ns = MonoNowNs();
  int64_t last_ns = start_ns, last_total = 0;
  std::unique_lock<std::mutex> l(mu_);
  while (!cv_.wait_for(l, std::chrono::duration<double>(interval_s_), [this] { return stop_; })) {
    const ProgressCounts c = counts_();
    const int64_t now_ns = MonoNowNs();
    const double rate = (c.done + c.failed - last_total) / ((now_ns - last_ns) * 1e-9);
    std::fprintf(out_, "%s t=%.0fs: %lld done, %lld failed, %.1f/s%s%s\n", name_.c_str(),
                 (now_ns - start_ns) * 1e-9, static_cast<long long>(c.done),
                 static_cast<long long>(c.failed), rate, c.detail.empty() ? "" : ", ",
                 c.detail.c_str());
    std::fflush(out_);
    last_ns = now_ns;
    last_total = c.done + c.failed;
  }
}

}  // namespace kvtier::bench
