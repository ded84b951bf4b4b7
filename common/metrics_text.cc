#include "common/metrics_text.h"

#include <charconv>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>
#include <system_error>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace kvtier {
namespace {

bool IsBlank(char c) { return c == ' ' || c == '\t'; }

// A cursor over one line; every Parse* reports what it expected, the caller adds the line.
class LineReader {
 public:
  explicit LineReader(absl::string_view line) : rest_(line) {}

  void SkipBlanks() {
    while (!rest_.empty() && IsBlank(rest_.front())) rest_.remove_prefix(1);
  }
  bool AtEnd() const { return rest_.empty(); }
  bool Consume(char c) {
    if (rest_.empty() || rest_.front() != c) return false;
    rest_.remove_prefix(1);
    return true;
  }
  char Peek() const { return rest_.empty() ? '\0' : rest_.front(); }

  // The longest prefix of characters allowed in a metric (colons) or label name.
  absl::string_view Name(bool metric) {
    size_t n = 0;
    while (n < rest_.size()) {
      const char c = rest_[n];
      if (!(absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '_' || (metric && c == ':')))
        break;
      ++n;
    }
    absl::string_view name = rest_.substr(0, n);
    rest_.remove_prefix(n);
    return name;
  }

  // Up to the next blank or the end.
  absl::string_view Token() {
    size_t n = 0;
    while (n < rest_.size() && !IsBlank(rest_[n])) ++n;
    absl::string_view t = rest_.substr(0, n);
    rest_.remove_prefix(n);
    return t;
  }

  absl::string_view Rest() const { return rest_; }

  // A quoted label value after its opening quote: \\, \" and \n are the only escapes.
  absl::StatusOr<std::string> QuotedValue() {
    std::string out;
    while (!rest_.empty()) {
      const char c = rest_.front();
      rest_.remove_prefix(1);
      if (c == '"') return out;
      if (c != '\\') {
        out += c;
        continue;
      }
      if (rest_.empty()) break;
      const char e = rest_.front();
      rest_.remove_prefix(1);
      switch (e) {
        case '\\':
          out += '\\';
          break;
        case '"':
          out += '"';
          break;
        case 'n':
          out += '\n';
          break;
        default:
          return absl::InvalidArgumentError(
              absl::StrCat("invalid escape '\\", std::string(1, e), "' in a label value"));
      }
    }
    return absl::InvalidArgumentError("unterminated label value");
  }

 private:
  absl::string_view rest_;
};

// A float as Prometheus writes it: decimal or exponent notation, NaN, +Inf, -Inf (any case).
std::optional<double> ParseValue(absl::string_view t) {
  if (t.empty()) return std::nullopt;
  bool negative = false;
  if (t.front() == '+' || t.front() == '-') {
    negative = t.front() == '-';
    t.remove_prefix(1);
  }
  if (t.empty() || t.front() == '+' || t.front() == '-') return std::nullopt;
  double v = 0;
  if (absl::EqualsIgnoreCase(t, "inf") || absl::EqualsIgnoreCase(t, "infinity")) {
    v = std::numeric_limits<double>::infinity();
  } else if (absl::EqualsIgnoreCase(t, "nan")) {
    v = std::numeric_limits<double>::quiet_NaN();
  } else {
    const std::from_chars_result r = std::from_chars(t.data(), t.data() + t.size(), v);
    // Out of range is an error of from_chars; Prometheus' parser gives +-Inf (overflow) or 0
    // (underflow) there, as strtod does.
    if (r.ec == std::errc::result_out_of_range && r.ptr == t.data() + t.size()) {
      v = std::strtod(std::string(t).c_str(), nullptr);
    } else if (r.ec != std::errc() || r.ptr != t.data() + t.size()) {
      return std::nullopt;
    }
  }
  return negative ? -v : v;
}

std::optional<int64_t> ParseTimestamp(absl::string_view t) {
  int64_t v = 0;
  if (!t.empty() && t.front() == '+') t.remove_prefix(1);
  const std::from_chars_result r = std::from_chars(t.data(), t.data() + t.size(), v);
  if (t.empty() || r.ec != std::errc() || r.ptr != t.data() + t.size()) return std::nullopt;
  return v;
}

std::optional<MetricType> ParseType(absl::string_view t) {
  for (MetricType m : {MetricType::kCounter, MetricType::kGauge, MetricType::kHistogram,
                       MetricType::kSummary, MetricType::kUntyped}) {
    if (t == MetricTypeName(m)) return m;
  }
  return std::nullopt;
}

// HELP text: \\ and \n are escapes; any other backslash stays as it is (as Prometheus reads it).
std::string UnescapeHelp(absl::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size() && (s[i + 1] == '\\' || s[i + 1] == 'n')) {
      out += s[i + 1] == 'n' ? '\n' : '\\';
      ++i;
    } else {
      out += s[i];
    }
  }
  return out;
}

class Parser {
 public:
  absl::Status Line(absl::string_view line) {
    LineReader r(line);
    r.SkipBlanks();
    if (r.AtEnd()) return absl::OkStatus();
    if (r.Consume('#')) return Comment(r);
    return Sample(r);
  }

  ParsedMetrics Take() { return std::move(out_); }

 private:
  // "# HELP name text", "# TYPE name type"; any other comment is ignored.
  absl::Status Comment(LineReader& r) {
    r.SkipBlanks();
    const absl::string_view keyword = r.Token();
    if (keyword != "HELP" && keyword != "TYPE") return absl::OkStatus();
    r.SkipBlanks();
    const std::string name(r.Name(/*metric=*/true));
    if (name.empty() || !IsValidMetricName(name) || !(r.AtEnd() || IsBlank(r.Peek()))) {
      return absl::InvalidArgumentError(absl::StrCat("bad metric name in the ", keyword, " line"));
    }
    r.SkipBlanks();
    if (keyword == "HELP") {
      if (!out_.help.emplace(name, UnescapeHelp(r.Rest())).second) {
        return absl::InvalidArgumentError(absl::StrCat("a second HELP line for ", name));
      }
      return absl::OkStatus();
    }
    const absl::string_view type_name = absl::StripTrailingAsciiWhitespace(r.Rest());
    const std::optional<MetricType> type = ParseType(type_name);
    if (!type) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown metric type '", type_name, "' for ", name));
    }
    if (seen_.count(name) > 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("the TYPE line of ", name, " after its samples"));
    }
    if (!out_.types.emplace(name, *type).second) {
      return absl::InvalidArgumentError(absl::StrCat("a second TYPE line for ", name));
    }
    return absl::OkStatus();
  }

  absl::Status Sample(LineReader& r) {
    MetricSample s;
    s.name = std::string(r.Name(/*metric=*/true));
    if (!IsValidMetricName(s.name)) {
      return absl::InvalidArgumentError("a sample line must start with a metric name");
    }
    if (!r.AtEnd() && !IsBlank(r.Peek()) && r.Peek() != '{') {
      return absl::InvalidArgumentError(absl::StrCat("expected labels or a value after ", s.name));
    }
    r.SkipBlanks();
    if (r.Consume('{')) {
      for (;;) {
        r.SkipBlanks();
        if (r.Consume('}')) break;
        std::string label(r.Name(/*metric=*/false));
        if (!IsValidLabelName(label)) {
          return absl::InvalidArgumentError(absl::StrCat("bad label name in ", s.name));
        }
        for (const auto& [k, v] : s.labels) {
          if (k == label) {
            return absl::InvalidArgumentError(
                absl::StrCat("label '", label, "' given twice in ", s.name));
          }
        }
        r.SkipBlanks();
        if (!r.Consume('=')) {
          return absl::InvalidArgumentError(absl::StrCat("expected '=' after label ", label));
        }
        r.SkipBlanks();
        if (!r.Consume('"')) {
          return absl::InvalidArgumentError(
              absl::StrCat("expected a quoted value for label ", label));
        }
        absl::StatusOr<std::string> value = r.QuotedValue();
        if (!value.ok()) return value.status();
        s.labels.emplace_back(std::move(label), *std::move(value));
        r.SkipBlanks();
        if (r.Consume('}')) break;
        if (!r.Consume(',')) {
          return absl::InvalidArgumentError(absl::StrCat("expected ',' or '}' in ", s.name));
        }
      }
      r.SkipBlanks();
    }
    const absl::string_view value = r.Token();
    const std::optional<double> v = ParseValue(value);
    if (!v) return absl::InvalidArgumentError(absl::StrCat("bad value '", value, "' of ", s.name));
    s.value = *v;
    r.SkipBlanks();
    if (!r.AtEnd()) {
      const absl::string_view ts = r.Token();
      s.timestamp_ms = ParseTimestamp(ts);
      if (!s.timestamp_ms) {
        return absl::InvalidArgumentError(absl::StrCat("bad timestamp '", ts, "' of ", s.name));
      }
      r.SkipBlanks();
      if (!r.AtEnd()) {
        return absl::InvalidArgumentError(absl::StrCat("text after the timestamp of ", s.name));
      }
    }
    const std::string family = out_.FamilyOf(s.name);
    auto type = out_.types.find(family);
    if (type != out_.types.end() && type->second == MetricType::kHistogram &&
        absl::EndsWith(s.name, "_bucket")) {
      bool has_le = false;
      for (const auto& [k, unused] : s.labels) has_le = has_le || k == "le";
      if (!has_le) {
        return absl::InvalidArgumentError(absl::StrCat("histogram bucket ", s.name, " has no le"));
      }
    }
    seen_.insert(family);
    out_.samples.push_back(std::move(s));
    return absl::OkStatus();
  }

  ParsedMetrics out_;
  std::set<std::string> seen_;  // families with samples
};

}  // namespace

const char* MetricTypeName(MetricType type) {
  switch (type) {
    case MetricType::kCounter:
      return "counter";
    case MetricType::kGauge:
      return "gauge";
    case MetricType::kHistogram:
      return "histogram";
    case MetricType::kSummary:
      return "summary";
    case MetricType::kUntyped:
      break;
  }
  return "untyped";
}

std::string ParsedMetrics::FamilyOf(absl::string_view sample_name) const {
  for (absl::string_view suffix : {"_bucket", "_sum", "_count"}) {
    absl::string_view stem = sample_name;
    if (!absl::ConsumeSuffix(&stem, suffix)) continue;
    auto it = types.find(std::string(stem));
    if (it == types.end()) continue;
    if (it->second == MetricType::kHistogram ||
        (it->second == MetricType::kSummary && suffix != "_bucket")) {
      return std::string(stem);
    }
  }
  return std::string(sample_name);
}

std::set<std::string> ParsedMetrics::Families() const {
  std::set<std::string> out;
  for (const MetricSample& s : samples) out.insert(FamilyOf(s.name));
  return out;
}

bool ParsedMetrics::Has(absl::string_view name) const {
  for (const MetricSample& s : samples) {
    if (s.name == name) return true;
  }
  return false;
}

double ParsedMetrics::Sum(absl::string_view name, const MetricLabels& match) const {
  double sum = 0;
  for (const MetricSample& s : samples) {
    if (s.name != name) continue;
    bool ok = true;
    for (const auto& [key, want] : match) {
      std::string got;
      for (const auto& [k, v] : s.labels) {
        if (k == key) got = v;
      }
      ok = ok && got == want;
    }
    if (ok) sum += s.value;
  }
  return sum;
}

absl::StatusOr<ParsedMetrics> ParseMetricsText(absl::string_view text, size_t max_bytes) {
  if (text.size() > max_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "metrics text of ", text.size(), " bytes is over the limit of ", max_bytes, " bytes"));
  }
  Parser parser;
  size_t line_no = 0;
  while (!text.empty()) {
    ++line_no;
    const size_t end = text.find('\n');
    const absl::string_view line = text.substr(0, end);
    text.remove_prefix(end == absl::string_view::npos ? text.size() : end + 1);
    if (absl::Status s = parser.Line(line); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("line ", line_no, ": ", s.message()));
    }
  }
  return parser.Take();
}

}  // namespace kvtier
