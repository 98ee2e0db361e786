/*
 * A small persistent thread pool for the CPU kernels: parallelFor(count, threads, fn) runs
 * fn(begin, end) over [0, count) split into parts, on the caller's thread and up to threads - 1
 * pool workers. Workers sleep on a condition variable between calls (they never spin: a server's
 * event loop needs those cycles). One call at a time owns the pool; a concurrent call (another
 * session, another server thread) runs on its own thread rather than wait. A process forked
 * after the pool started gets a fresh pool (the parent's workers do not exist in the child).
 * Nothing here throws out of parallelFor: if threads cannot be started, the work runs serially.
 */
#ifndef STN_CPU_THREAD_POOL_H
#define STN_CPU_THREAD_POOL_H

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <unistd.h>
#include <vector>

namespace stn
{
namespace cpu
{

class ThreadPool final
{
public:
    using Body = void (*)(void* ctx, int64_t begin, int64_t end);

    //! The process's pool (created on first use; a new one after fork()).
    static ThreadPool& instance()
    {
        static std::mutex guard;
        static ThreadPool* pool = nullptr;
        std::lock_guard<std::mutex> lock(guard);
        if (pool == nullptr || pool->mPid != getpid())
        {
            // Deliberately leaked: workers blocked at exit must not be joined by a static
            // destructor, and after fork() the parent's pool object is unusable in the child.
            pool = new ThreadPool();
        }
        return *pool;
    }

    //! Run body(ctx, begin, end) over [0, count) in `parts` contiguous ranges on up to `threads`
    //! threads (the caller included). Returns when every range is done.
    void parallelFor(int64_t count, int32_t threads, int64_t parts, Body body, void* ctx) noexcept
    {
        if (count <= 0)
        {
            return;
        }
        parts = parts < 1 ? 1 : (parts > count ? count : parts);
        std::unique_lock<std::mutex> busy(mBusy, std::try_to_lock);
        int32_t const helpers = busy.owns_lock() ? ensureWorkers(threads - 1) : 0;
        if (helpers <= 0 || parts == 1)
        {
            body(ctx, 0, count);
            return;
        }
        {
            std::lock_guard<std::mutex> lock(mMutex);
            mBody = body;
            mCtx = ctx;
            mCount = count;
            mParts = parts;
            mNext.store(0, std::memory_order_relaxed);
            mPending = helpers;
            mWanted = helpers;
            ++mGeneration;
        }
        mStart.notify_all();
        runParts();
        std::unique_lock<std::mutex> lock(mMutex);
        mDone.wait(lock, [this] { return mPending == 0; });
    }

private:
    ThreadPool()
        : mPid(getpid())
    {
    }

    //! Start workers until `wanted` exist (best effort); returns how many can help.
    int32_t ensureWorkers(int32_t wanted) noexcept
    {
        constexpr int32_t kMAX_WORKERS = 255;
        wanted = wanted > kMAX_WORKERS ? kMAX_WORKERS : wanted;
        while (static_cast<int32_t>(mWorkers.size()) < wanted)
        {
            try
            {
                mWorkers.emplace_back([this] { workerLoop(); });
            }
            catch (...)
            {
                break;
            }
        }
        int32_t const have = static_cast<int32_t>(mWorkers.size());
        return wanted < have ? wanted : have;
    }

    void runParts() noexcept
    {
        for (;;)
        {
            int64_t const part = mNext.fetch_add(1, std::memory_order_relaxed);
            if (part >= mParts)
            {
                return;
            }
            int64_t const begin = mCount * part / mParts;
            int64_t const end = mCount * (part + 1) / mParts;
            mBody(mCtx, begin, end);
        }
    }

    void workerLoop() noexcept
    {
        uint64_t seen = 0;
        for (;;)
        {
            {
                std::unique_lock<std::mutex> lock(mMutex);
                // Only the first `mWanted` workers to wake join a call; the others sleep on.
                mStart.wait(lock, [&] { return mGeneration != seen && mWanted > 0; });
                seen = mGeneration;
                --mWanted;
            }
            runParts();
            std::lock_guard<std::mutex> lock(mMutex);
            if (--mPending == 0)
            {
                mDone.notify_one();
            }
        }
    }

    pid_t const mPid;
    std::mutex mBusy;  // held by the call that owns the workers
    std::mutex mMutex; // guards the fields below and the two condition variables
    std::condition_variable mStart;
    std::condition_variable mDone;
    std::vector<std::thread> mWorkers;
    Body mBody{nullptr};
    void* mCtx{nullptr};
    int64_t mCount{0};
    int64_t mParts{0};
    std::atomic<int64_t> mNext{0};
    int32_t mPending{0};
    int32_t mWanted{0};
    uint64_t mGeneration{0};
};

} // namespace cpu
} // namespace stn

#endif // STN_CPU_THREAD_POOL_H
