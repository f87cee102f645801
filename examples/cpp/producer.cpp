// A solver written in C++ that feeds the DATAMOVE trainer: plain ADIOS2, no DATAMOVE library.
//
// It follows the stream contract (docs/stream-contract.md), like examples/producer.py does in
// Python: one stream per ensemble member named member-<id:06d> in the study's stream folder,
// attributes before the first step (member int64, params double[5], param_names as ONE
// comma-separated string, solver "heat"), then per step a float64 scalar `time` and a float32
// field `u` of global shape [ny, nx] (row = y, column = x).
//
// The toy "solver" is an explicit 5-point heat stencil: the field starts at t_init and diffuses
// towards the four Dirichlet wall temperatures t_x0, t_xl, t_y0, t_yl.
//
//   producer [--open-timeout SECONDS] STREAM_DIR MEMBER NX NY STEPS [ADIOS2_XML]
//
// Without ADIOS2_XML the engine is SST with the lossless settings of the contract
// (RendezvousReaderCount=1, QueueLimit=4, QueueFullPolicy=Block, DataTransport=WAN). With it, the
// engine and its parameters come from the file's <io name="datamove">: the same file DATAMOVE reads
// through `stream.xml_config` (examples/adios2.xml).
//
// SST's Open waits for the trainer with no timeout of its own; --open-timeout (default 600 s, 0 =
// wait forever) is a watchdog that ends the program with an error if Open has not returned by then.
//
// Build: examples/cpp/build.sh [OUTPUT]   (g++ against the headers and libraries of the adios2 wheel)

#include <adios2.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <iostream>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace
{

constexpr const char *kIoName = "datamove"; // the <io name="..."> DATAMOVE reads in an XML config
constexpr const char *kSolver = "heat";
constexpr const char *kParamNames = "t_init,t_x0,t_xl,t_y0,t_yl"; // one string, not a string array
constexpr std::size_t kNParams = 5;
constexpr double kDt = 0.01;
constexpr double kR = 0.2; // D*dt/h^2 of the explicit stencil (stable for <= 0.25)

struct Args
{
    std::string streamDir;
    std::int64_t member = 0;
    std::size_t nx = 0, ny = 0, steps = 0;
    std::string xml; // empty: built-in SST settings
    double openTimeout = 600.0;
};

[[noreturn]] void usage(const std::string &why)
{
    std::cerr << "producer: " << why << "\n"
              << "usage: producer [--open-timeout SECONDS] STREAM_DIR MEMBER NX NY STEPS [ADIOS2_XML]\n";
    std::exit(2);
}

long long toInt(const std::string &name, const std::string &text, long long min)
{
    std::size_t used = 0;
    long long v = 0;
    try
    {
        v = std::stoll(text, &used);
    }
    catch (const std::exception &)
    {
        usage(name + " must be an integer, got '" + text + "'");
    }
    if (used != text.size())
        usage(name + " must be an integer, got '" + text + "'");
    if (v < min)
        usage(name + " must be >= " + std::to_string(min) + ", got " + text);
    return v;
}

Args parse(int argc, char **argv)
{
    Args a;
    std::vector<std::string> pos;
    for (int i = 1; i < argc; ++i)
    {
        std::string s = argv[i];
        if (s == "--open-timeout")
        {
            if (i + 1 >= argc)
                usage("--open-timeout needs a value");
            std::string v = argv[++i];
            std::size_t used = 0;
            try
            {
                a.openTimeout = std::stod(v, &used);
            }
            catch (const std::exception &)
            {
                used = 0;
            }
            if (used != v.size() || !(a.openTimeout >= 0.0))
                usage("--open-timeout must be a number >= 0, got '" + v + "'");
        }
        else if (s == "-h" || s == "--help")
        {
            usage("help");
        }
        else
        {
            pos.push_back(s);
        }
    }
    if (pos.size() < 5 || pos.size() > 6)
        usage("expected 5 or 6 arguments, got " + std::to_string(pos.size()));
    a.streamDir = pos[0];
    a.member = toInt("MEMBER", pos[1], 0);
    a.nx = static_cast<std::size_t>(toInt("NX", pos[2], 1));
    a.ny = static_cast<std::size_t>(toInt("NY", pos[3], 1));
    a.steps = static_cast<std::size_t>(toInt("STEPS", pos[4], 1));
    if (pos.size() == 6)
        a.xml = pos[5];
    return a;
}

std::string streamName(std::int64_t member)
{
    char buf[32];
    std::snprintf(buf, sizeof buf, "member-%06lld", static_cast<long long>(member));
    return buf;
}

std::string upper(std::string s)
{
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::toupper(c); });
    return s;
}

// Ends the process if Open has not returned within `seconds` (SST's writer-side Open has no timeout).
class OpenWatchdog
{
public:
    OpenWatchdog(double seconds, std::string what) : m_What(std::move(what))
    {
        if (seconds <= 0.0)
            return;
        m_Thread = std::thread([this, seconds] {
            std::unique_lock<std::mutex> lock(m_Mutex);
            const auto limit = std::chrono::duration<double>(seconds);
            if (!m_Cv.wait_for(lock, limit, [this] { return m_Done; }))
            {
                std::remove((m_What + ".sst").c_str()); // our contact file: no reader will come
                std::cerr << "producer: error: no reader connected to " << m_What << " within "
                          << seconds << " s (is `datamove train` running on this study?)" << std::endl;
                std::_Exit(3);
            }
        });
    }
    void done()
    {
        {
            std::lock_guard<std::mutex> lock(m_Mutex);
            m_Done = true;
        }
        m_Cv.notify_all();
        if (m_Thread.joinable())
            m_Thread.join();
    }
    ~OpenWatchdog() { done(); }

private:
    std::string m_What;
    std::mutex m_Mutex;
    std::condition_variable m_Cv;
    bool m_Done = false;
    std::thread m_Thread;
};

int run(const Args &a)
{
    namespace fs = std::filesystem;
    if (!a.xml.empty() && !fs::is_regular_file(a.xml))
        throw std::runtime_error("ADIOS2 XML config not found: " + a.xml);

    // SST writers whose folder is missing crash later ("Failed to create contact file").
    fs::create_directories(a.streamDir);

    adios2::ADIOS adios = a.xml.empty() ? adios2::ADIOS() : adios2::ADIOS(a.xml);
    adios2::IO io = adios.DeclareIO(kIoName);
    if (a.xml.empty())
    {
        io.SetEngine("SST");
        io.SetParameters({{"RendezvousReaderCount", "1"},
                          {"QueueLimit", "4"},
                          {"QueueFullPolicy", "Block"},
                          {"DataTransport", "WAN"}});
    }
    else if (!io.InConfigFile())
    {
        throw std::runtime_error(a.xml + " has no <io name=\"" + std::string(kIoName) + "\">");
    }
    const std::string engine = upper(io.EngineType());
    std::cout << "producer: member " << a.member << " engine " << engine << " (";
    const adios2::Params used = io.Parameters();
    for (auto it = used.begin(); it != used.end(); ++it)
        std::cout << (it == used.begin() ? "" : ", ") << it->first << "=" << it->second;
    std::cout << ") from " << (a.xml.empty() ? std::string("built-in settings") : a.xml) << std::endl;

    // The member's parameters: the same values as examples/producer.py.
    std::vector<double> params = {300.0, 100.0, 500.0, 200.0, 400.0};
    for (double &p : params)
        p += static_cast<double>(a.member);

    // Contract attributes (written with the first step), then the solver's constants.
    io.DefineAttribute<std::int64_t>("member", a.member);
    io.DefineAttribute<double>("params", params.data(), kNParams);
    io.DefineAttribute<std::string>("param_names", kParamNames);
    io.DefineAttribute<std::string>("solver", kSolver);
    io.DefineAttribute<std::int64_t>("nx", static_cast<std::int64_t>(a.nx));
    io.DefineAttribute<std::int64_t>("ny", static_cast<std::int64_t>(a.ny));
    io.DefineAttribute<double>("dt", kDt);
    io.DefineAttribute<std::string>("producer", "examples/cpp/producer.cpp");

    auto varTime = io.DefineVariable<double>("time");
    auto varU = io.DefineVariable<float>("u", {a.ny, a.nx}, {0, 0}, {a.ny, a.nx}, adios2::ConstantDims);

    // BP5 (files) appends .bp to the name; SST adds the .sst contact file itself.
    fs::path path = fs::path(a.streamDir) / (streamName(a.member) + (engine == "BP5" ? ".bp" : ""));
    adios2::Engine writer;
    {
        OpenWatchdog watchdog(engine == "SST" ? a.openTimeout : 0.0, path.string());
        writer = io.Open(path.string(), adios2::Mode::Write);
        watchdog.done();
    }

    // Explicit 5-point heat stencil on the interior nodes, Dirichlet walls.
    const std::size_t nx = a.nx, ny = a.ny;
    const double tInit = params[0], tX0 = params[1], tXl = params[2], tY0 = params[3], tYl = params[4];
    std::vector<double> u(nx * ny, tInit), next(nx * ny);
    std::vector<float> field(nx * ny);
    auto at = [&](std::size_t j, std::size_t i) { return u[j * nx + i]; };
    for (std::size_t k = 1; k <= a.steps; ++k)
    {
        for (std::size_t j = 0; j < ny; ++j)
        {
            for (std::size_t i = 0; i < nx; ++i)
            {
                const double w = i > 0 ? at(j, i - 1) : tX0;
                const double e = i + 1 < nx ? at(j, i + 1) : tXl;
                const double s = j > 0 ? at(j - 1, i) : tY0;
                const double n = j + 1 < ny ? at(j + 1, i) : tYl;
                next[j * nx + i] = at(j, i) + kR * (w + e + s + n - 4.0 * at(j, i));
            }
        }
        u.swap(next);
        for (std::size_t q = 0; q < u.size(); ++q)
        {
            field[q] = static_cast<float>(u[q]);
            if (!std::isfinite(field[q]))
                throw std::runtime_error("non-finite value in u at step " + std::to_string(k));
        }
        const double time = static_cast<double>(k) * kDt;
        if (writer.BeginStep() != adios2::StepStatus::OK)
            throw std::runtime_error("BeginStep failed at step " + std::to_string(k));
        writer.Put(varTime, time);
        writer.Put(varU, field.data());
        writer.EndStep(); // Put is deferred: `field` must stay untouched until EndStep
    }
    writer.Close();
    std::cout << "producer: member " << a.member << " wrote " << a.steps << " steps of u [" << ny << ", "
              << nx << "] to " << path.string() << " (" << engine << ")" << std::endl;
    return 0;
}

} // namespace

int main(int argc, char **argv)
{
    const Args args = parse(argc, argv);
    try
    {
        return run(args);
    }
    catch (const std::exception &e)
    {
        std::cerr << "producer: error: member " << args.member << ": " << e.what() << std::endl;
        return 1;
    }
}
