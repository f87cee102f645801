// A solver written in C++ that feeds the DATAMOVE trainer: plain ADIOS2, no DATAMOVE library.
//
// It follows the stream contract (docs/stream-contract.md), like examples/producer.py does in
// Python: one stream per ensemble member, attributes before the first step (member int64, params
// double[n], param_names as ONE comma-separated string, solver), then per step a float64 scalar
// `time` and float32 fields of global shape [ny, nx] (row = y, column = x). Two ways to call it:
//
// Launcher mode, the form of a config's `solver.command` (the launcher fills in the {...}):
//
//   producer --out {stream} --id {member} --engine {engine} --params {params} --steps {n_steps}
//            --nx NX --ny NY [--param-names {param_names}] [--solver {solver}] [--fields u,v]
//            [--dt DT] [--open-timeout SECONDS] [--xml ADIOS2_XML]
//
//   It writes {stream}.bp with BP5 and opens {stream} with SST (ADIOS2 adds {stream}.sst).
//   --params takes any number of values (0.25,3.5); --param-names defaults to p0,p1,...,
//   --solver to my-solver, --fields to u, --dt to 1/steps (time runs over (0, 1]). The toy "solver"
//   is a smooth, deterministic function of the params and t, different per field (index f), that a
//   surrogate can learn; the same as examples/producer.py writes:
//
//     field_f(x, y, t) = f + sum_i p_i sin(pi (i+1) x) cos(pi (f+1) y) exp(-(i+1) t)
//
//   on the cell centres x = (ix + 0.5) / nx, y = (iy + 0.5) / ny.
//
// Stream-folder mode (the heat study's names and solver):
//
//   producer [--open-timeout SECONDS] STREAM_DIR MEMBER NX NY STEPS [ADIOS2_XML]
//
//   writes STREAM_DIR/member-<MEMBER:06d> (.bp with BP5), params t_init,t_x0,t_xl,t_y0,t_yl, solver
//   "heat", and a field `u` from an explicit 5-point heat stencil: the field starts at t_init and
//   diffuses towards the four Dirichlet wall temperatures.
//
// Without an ADIOS2 XML the engine is --engine (default SST), SST with the lossless settings of the
// contract (RendezvousReaderCount=1, QueueLimit=4, QueueFullPolicy=Block, DataTransport=WAN). With
// one, the engine and its parameters come from the file's <io name="datamove">: the same file
// DATAMOVE reads through `stream.xml_config` (examples/adios2.xml). An --engine other than the file's
// replaces it, with that engine's settings above (held-out members are written with BP5).
//
// SST's Open waits for the trainer with no timeout of its own; --open-timeout (default 600 s, 0 =
// wait forever) is a watchdog that ends the program with an error if Open has not returned by then.
//
// Build: examples/cpp/build.sh [OUTPUT]   (g++ against the headers and libraries of the adios2 wheel)

#include <adios2.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <condition_variable>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <functional>
#include <iostream>
#include <map>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace
{

constexpr const char *kIoName = "datamove"; // the <io name="..."> DATAMOVE reads in an XML config
constexpr double kPi = 3.14159265358979323846;

// Stream-folder mode: the heat solver.
constexpr const char *kHeatSolver = "heat";
constexpr const char *kHeatParamNames = "t_init,t_x0,t_xl,t_y0,t_yl"; // one string, not a string array
constexpr double kHeatDt = 0.01;
constexpr double kR = 0.2; // D*dt/h^2 of the explicit stencil (stable for <= 0.25)

struct Args
{
    bool launcher = false; // --out given
    std::string out;       // launcher mode: the stream path without suffix
    std::string streamDir; // stream-folder mode
    std::int64_t member = 0;
    std::size_t nx = 0, ny = 0, steps = 0;
    std::string engine; // launcher mode: SST or BP5; empty: the XML's, else SST
    std::vector<double> params;
    std::string paramNames; // comma-separated
    std::string solver;
    std::vector<std::string> fields;
    double dt = 0.0;
    std::string xml; // empty: built-in settings
    double openTimeout = 600.0;
};

const char *kUsage =
    "usage: producer --out PATH --id MEMBER --engine SST|BP5 --params V1,V2,... --steps STEPS --nx NX --ny NY\n"
    "                [--param-names A,B,...] [--solver NAME] [--fields U,V,...] [--dt DT]\n"
    "                [--open-timeout SECONDS] [--xml ADIOS2_XML]\n"
    "       producer [--open-timeout SECONDS] STREAM_DIR MEMBER NX NY STEPS [ADIOS2_XML]\n";

[[noreturn]] void usage(const std::string &why)
{
    std::cerr << "producer: " << why << "\n" << kUsage;
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

double toDouble(const std::string &name, const std::string &text)
{
    std::size_t used = 0;
    double v = 0.0;
    try
    {
        v = std::stod(text, &used);
    }
    catch (const std::exception &)
    {
        used = 0;
    }
    if (used == 0 || used != text.size() || !std::isfinite(v))
        usage(name + " must be a finite number, got '" + text + "'");
    return v;
}

std::vector<std::string> split(const std::string &name, const std::string &text)
{
    std::vector<std::string> items;
    std::stringstream in(text);
    for (std::string item; std::getline(in, item, ',');)
        items.push_back(item);
    if (items.empty() || text.back() == ',' ||
        std::any_of(items.begin(), items.end(), [](const std::string &i) { return i.empty(); }))
        usage(name + " must be a comma-separated list without empty items, got '" + text + "'");
    return items;
}

std::string upper(std::string s)
{
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::toupper(c); });
    return s;
}

Args parse(int argc, char **argv)
{
    Args a;
    std::vector<std::string> pos;
    std::map<std::string, std::string> opt; // --name -> value
    const std::vector<std::string> known = {"--out",    "--id",     "--engine", "--params", "--steps",
                                            "--nx",     "--ny",     "--param-names",        "--solver",
                                            "--fields", "--dt",     "--xml",    "--open-timeout"};
    for (int i = 1; i < argc; ++i)
    {
        std::string s = argv[i];
        if (s == "-h" || s == "--help")
            usage("help");
        if (std::find(known.begin(), known.end(), s) != known.end())
        {
            if (i + 1 >= argc)
                usage(s + " needs a value");
            opt[s] = argv[++i];
        }
        else if (s.rfind("--", 0) == 0)
            usage("unknown option " + s);
        else
            pos.push_back(s);
    }
    auto has = [&](const char *k) { return opt.count(k) > 0; };
    if (has("--open-timeout"))
    {
        a.openTimeout = toDouble("--open-timeout", opt["--open-timeout"]);
        if (a.openTimeout < 0.0)
            usage("--open-timeout must be >= 0, got '" + opt["--open-timeout"] + "'");
    }
    a.launcher = has("--out");
    if (!a.launcher)
    {
        // Stream-folder mode: positional arguments, --open-timeout the only option.
        for (const auto &kv : opt)
            if (kv.first != "--open-timeout")
                usage(kv.first + " needs --out (launcher mode)");
        if (pos.size() < 5 || pos.size() > 6)
            usage("expected 5 or 6 arguments, got " + std::to_string(pos.size()));
        a.streamDir = pos[0];
        a.member = toInt("MEMBER", pos[1], 0);
        a.nx = static_cast<std::size_t>(toInt("NX", pos[2], 1));
        a.ny = static_cast<std::size_t>(toInt("NY", pos[3], 1));
        a.steps = static_cast<std::size_t>(toInt("STEPS", pos[4], 1));
        if (pos.size() == 6)
            a.xml = pos[5];
        a.params = {300.0, 100.0, 500.0, 200.0, 400.0}; // the walls of examples/producer.py, + member
        for (double &p : a.params)
            p += static_cast<double>(a.member);
        a.paramNames = kHeatParamNames;
        a.solver = kHeatSolver;
        a.fields = {"u"};
        a.dt = kHeatDt;
        return a;
    }
    if (!pos.empty())
        usage("launcher mode (--out) takes no positional argument, got '" + pos[0] + "'");
    for (const char *k : {"--id", "--params", "--steps", "--nx", "--ny"})
        if (!has(k))
            usage(std::string("--out needs ") + k);
    a.out = opt["--out"];
    a.member = toInt("--id", opt["--id"], 0);
    a.steps = static_cast<std::size_t>(toInt("--steps", opt["--steps"], 1));
    a.nx = static_cast<std::size_t>(toInt("--nx", opt["--nx"], 1));
    a.ny = static_cast<std::size_t>(toInt("--ny", opt["--ny"], 1));
    if (has("--engine"))
    {
        a.engine = upper(opt["--engine"]);
        if (a.engine != "SST" && a.engine != "BP5")
            usage("--engine must be SST or BP5, got '" + opt["--engine"] + "'");
    }
    for (const std::string &v : split("--params", opt["--params"]))
        a.params.push_back(toDouble("--params", v));
    if (has("--param-names"))
    {
        const auto names = split("--param-names", opt["--param-names"]);
        if (names.size() != a.params.size())
            usage(std::to_string(names.size()) + " param names for " + std::to_string(a.params.size()) +
                  " params");
        a.paramNames = opt["--param-names"];
    }
    else
    {
        for (std::size_t i = 0; i < a.params.size(); ++i)
            a.paramNames += (i ? ",p" : "p") + std::to_string(i);
    }
    a.solver = has("--solver") ? opt["--solver"] : "my-solver";
    a.fields = split("--fields", has("--fields") ? opt["--fields"] : "u");
    a.dt = has("--dt") ? toDouble("--dt", opt["--dt"]) : 1.0 / static_cast<double>(a.steps);
    a.xml = has("--xml") ? opt["--xml"] : "";
    return a;
}

std::string streamName(std::int64_t member)
{
    char buf[32];
    std::snprintf(buf, sizeof buf, "member-%06lld", static_cast<long long>(member));
    return buf;
}

std::string join(const std::vector<std::string> &items)
{
    std::string s;
    for (const auto &i : items)
        s += (s.empty() ? "" : ",") + i;
    return s;
}

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

// Fills the fields of step k (1-based), one float buffer of ny*nx per field.
using Solver = std::function<void(std::size_t k, std::vector<std::vector<float>> &fields)>;

// Launcher mode: field_f(x, y, t) = f + sum_i p_i sin(pi (i+1) x) cos(pi (f+1) y) exp(-(i+1) t).
Solver toySolver(const Args &a)
{
    return [a](std::size_t k, std::vector<std::vector<float>> &fields) {
        const double t = static_cast<double>(k) * a.dt;
        for (std::size_t f = 0; f < fields.size(); ++f)
        {
            for (std::size_t j = 0; j < a.ny; ++j)
            {
                const double y = (static_cast<double>(j) + 0.5) / static_cast<double>(a.ny);
                for (std::size_t i = 0; i < a.nx; ++i)
                {
                    const double x = (static_cast<double>(i) + 0.5) / static_cast<double>(a.nx);
                    double v = static_cast<double>(f);
                    for (std::size_t p = 0; p < a.params.size(); ++p)
                    {
                        const double m = static_cast<double>(p + 1);
                        v += a.params[p] * std::sin(kPi * m * x) * std::cos(kPi * static_cast<double>(f + 1) * y) *
                             std::exp(-m * t);
                    }
                    fields[f][j * a.nx + i] = static_cast<float>(v);
                }
            }
        }
    };
}

// Stream-folder mode: explicit 5-point heat stencil on the interior nodes, Dirichlet walls.
Solver heatSolver(const Args &a)
{
    const std::size_t nx = a.nx, ny = a.ny;
    const double tX0 = a.params[1], tXl = a.params[2], tY0 = a.params[3], tYl = a.params[4];
    std::vector<double> u(nx * ny, a.params[0]), next(nx * ny); // the state, kept by the lambda
    return [=](std::size_t, std::vector<std::vector<float>> &fields) mutable {
        auto at = [&](std::size_t j, std::size_t i) { return u[j * nx + i]; };
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
            fields[0][q] = static_cast<float>(u[q]);
    };
}

void setEngine(adios2::IO &io, const std::string &engine)
{
    io.SetEngine(engine);
    if (engine == "SST")
        io.SetParameters({{"RendezvousReaderCount", "1"},
                          {"QueueLimit", "4"},
                          {"QueueFullPolicy", "Block"},
                          {"DataTransport", "WAN"}});
}

int run(const Args &a)
{
    namespace fs = std::filesystem;
    if (!a.xml.empty() && !fs::is_regular_file(a.xml))
        throw std::runtime_error("ADIOS2 XML config not found: " + a.xml);

    adios2::ADIOS adios = a.xml.empty() ? adios2::ADIOS() : adios2::ADIOS(a.xml);
    adios2::IO io = adios.DeclareIO(kIoName);
    if (a.xml.empty())
    {
        setEngine(io, a.engine.empty() ? "SST" : a.engine);
    }
    else if (!io.InConfigFile())
    {
        throw std::runtime_error(a.xml + " has no <io name=\"" + std::string(kIoName) + "\">");
    }
    else if (!a.engine.empty() && a.engine != upper(io.EngineType()))
    {
        io.ClearParameters(); // the file's settings are for its engine
        setEngine(io, a.engine);
    }
    const std::string engine = upper(io.EngineType());
    std::cout << "producer: member " << a.member << " engine " << engine << " (";
    const adios2::Params used = io.Parameters();
    for (auto it = used.begin(); it != used.end(); ++it)
        std::cout << (it == used.begin() ? "" : ", ") << it->first << "=" << it->second;
    std::cout << ") from " << (a.xml.empty() ? std::string("built-in settings") : a.xml) << std::endl;

    // Contract attributes (written with the first step), then the solver's constants.
    io.DefineAttribute<std::int64_t>("member", a.member);
    io.DefineAttribute<double>("params", a.params.data(), a.params.size());
    io.DefineAttribute<std::string>("param_names", a.paramNames);
    io.DefineAttribute<std::string>("solver", a.solver);
    io.DefineAttribute<std::int64_t>("nx", static_cast<std::int64_t>(a.nx));
    io.DefineAttribute<std::int64_t>("ny", static_cast<std::int64_t>(a.ny));
    io.DefineAttribute<double>("dt", a.dt);
    io.DefineAttribute<std::string>("producer", "examples/cpp/producer.cpp");

    auto varTime = io.DefineVariable<double>("time");
    std::vector<adios2::Variable<float>> vars;
    for (const std::string &name : a.fields)
        vars.push_back(io.DefineVariable<float>(name, {a.ny, a.nx}, {0, 0}, {a.ny, a.nx}, adios2::ConstantDims));

    // BP5 (files) appends .bp to the name; SST adds the .sst contact file itself.
    const std::string base = a.launcher ? a.out : (fs::path(a.streamDir) / streamName(a.member)).string();
    const fs::path path = base + (engine == "BP5" ? ".bp" : "");
    // SST writers whose folder is missing crash later ("Failed to create contact file").
    if (path.has_parent_path())
        fs::create_directories(path.parent_path());
    adios2::Engine writer;
    {
        OpenWatchdog watchdog(engine == "SST" ? a.openTimeout : 0.0, path.string());
        writer = io.Open(path.string(), adios2::Mode::Write);
        watchdog.done();
    }

    const Solver solve = a.launcher ? toySolver(a) : heatSolver(a);
    std::vector<std::vector<float>> fields(a.fields.size(), std::vector<float>(a.nx * a.ny));
    for (std::size_t k = 1; k <= a.steps; ++k)
    {
        solve(k, fields);
        for (std::size_t f = 0; f < fields.size(); ++f)
            for (const float v : fields[f])
                if (!std::isfinite(v))
                    throw std::runtime_error("non-finite value in " + a.fields[f] + " at step " + std::to_string(k));
        const double time = static_cast<double>(k) * a.dt;
        if (writer.BeginStep() != adios2::StepStatus::OK)
            throw std::runtime_error("BeginStep failed at step " + std::to_string(k));
        writer.Put(varTime, time);
        for (std::size_t f = 0; f < fields.size(); ++f)
            writer.Put(vars[f], fields[f].data());
        writer.EndStep(); // Put is deferred: `fields` must stay untouched until EndStep
    }
    writer.Close();
    std::cout << "producer: member " << a.member << " wrote " << a.steps << " steps of " << join(a.fields) << " ["
              << a.ny << ", " << a.nx << "] to " << path.string() << " (" << engine << ")" << std::endl;
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
