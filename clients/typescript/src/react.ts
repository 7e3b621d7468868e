"use client";

/**
 * React bindings: an <AIQueueProvider client={...}> and the useAIQueue hook
 * with the shape the studio uses, `const { submitJob, getStatus } = useAIQueue()`.
 * React is an optional peer dependency: only this entry point imports it.
 */
import { createContext, createElement, useContext, useEffect, useMemo, useRef, type ReactNode } from "react";

import type { AIQueueClient, RequestOptions, SubmitOptions } from "./client.js";
import type { Job, SubmitJobBody } from "./types.js";
import type { WaitOptions } from "./wait.js";

const ClientContext = createContext<AIQueueClient | null>(null);

/** Props of AIQueueProvider. */
export interface AIQueueProviderProps {
  /** The client the components below use, from createClient. */
  client: AIQueueClient;
  children?: ReactNode;
}

/** Makes client available to useAIQueue in the tree below. */
export function AIQueueProvider({ client, children }: AIQueueProviderProps) {
  return createElement(ClientContext.Provider, { value: client }, children);
}

/** What useAIQueue returns. */
export interface AIQueue {
  /** Submits a job (POST /v1/jobs) and resolves with it, queued. */
  submitJob(body: SubmitJobBody, opts?: SubmitOptions): Promise<Job>;
  /**
   * Waits until the job ends and resolves with the final job (state
   * succeeded, failed or cancelled). Stops, rejecting with an AbortError,
   * when the component unmounts or opts.signal aborts.
   */
  getStatus(id: string, opts?: WaitOptions): Promise<Job>;
  /** Cancels a queued or running job; credits are refunded. */
  cancelJob(id: string, opts?: RequestOptions): Promise<Job>;
  /** Reads the job once, without waiting. */
  getJob(id: string, opts?: RequestOptions): Promise<Job>;
  /** The client itself, for the rest of the API. */
  client: AIQueueClient;
}

/**
 * Returns the aiqueue API for a component: the client passed in, or else the
 * one of the nearest AIQueueProvider. The functions are stable across renders;
 * waits still running when the component unmounts are abandoned.
 */
export function useAIQueue(client?: AIQueueClient): AIQueue {
  const fromContext = useContext(ClientContext);
  const c = client ?? fromContext;
  if (!c) {
    throw new Error("useAIQueue: no client; wrap the tree in <AIQueueProvider client={createClient(...)}> or pass one");
  }
  // One controller per mount (so React's StrictMode remount gets a fresh one),
  // aborted on unmount.
  const mounted = useRef<AbortController | null>(null);
  useEffect(() => {
    const ctrl = new AbortController();
    mounted.current = ctrl;
    return () => {
      ctrl.abort(new DOMException("the component unmounted", "AbortError"));
      if (mounted.current === ctrl) mounted.current = null;
    };
  }, []);

  return useMemo<AIQueue>(
    () => ({
      client: c,
      submitJob: (body, opts) => c.submitJob(body, opts),
      getStatus: (id, opts = {}) =>
        c.waitForJob(id, { ...opts, signal: anySignal(opts.signal, mounted.current?.signal) }),
      cancelJob: (id, opts) => c.cancelJob(id, opts),
      getJob: (id, opts) => c.getJob(id, opts),
    }),
    [c],
  );
}

/** A signal that aborts when any of the given ones does. */
function anySignal(...signals: (AbortSignal | undefined)[]): AbortSignal | undefined {
  const list = signals.filter((s): s is AbortSignal => s !== undefined);
  if (list.length <= 1) return list[0];
  const ctrl = new AbortController();
  const onAbort = (s: AbortSignal) => () => {
    ctrl.abort(s.reason);
    for (const [sig, fn] of listeners) sig.removeEventListener("abort", fn);
  };
  const listeners: [AbortSignal, () => void][] = [];
  for (const s of list) {
    if (s.aborted) {
      ctrl.abort(s.reason);
      break;
    }
    const fn = onAbort(s);
    listeners.push([s, fn]);
    s.addEventListener("abort", fn, { once: true });
  }
  if (ctrl.signal.aborted) for (const [sig, fn] of listeners) sig.removeEventListener("abort", fn);
  return ctrl.signal;
}
