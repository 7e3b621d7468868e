// Built by `make web` from web/src/playground.ts and clients/typescript/src with esbuild; do not edit.

// ../clients/typescript/node_modules/openapi-fetch/dist/index.mjs
var PATH_PARAM_RE = /\{[^{}]+\}/g;
var supportsRequestInitExt = () => {
  return typeof process === "object" && Number.parseInt(process?.versions?.node?.substring(0, 2)) >= 18 && process.versions.undici;
};
function randomID() {
  return Math.random().toString(36).slice(2, 11);
}
function createClient(clientOptions) {
  let {
    baseUrl = "",
    Request: CustomRequest = globalThis.Request,
    fetch: baseFetch = globalThis.fetch,
    querySerializer: globalQuerySerializer,
    bodySerializer: globalBodySerializer,
    pathSerializer: globalPathSerializer,
    headers: baseHeaders,
    requestInitExt = void 0,
    ...baseOptions
  } = { ...clientOptions };
  requestInitExt = supportsRequestInitExt() ? requestInitExt : void 0;
  baseUrl = removeTrailingSlash(baseUrl);
  const globalMiddlewares = [];
  async function coreFetch(schemaPath, fetchOptions) {
    const {
      baseUrl: localBaseUrl,
      fetch: fetch2 = baseFetch,
      Request = CustomRequest,
      headers,
      params = {},
      parseAs = "json",
      querySerializer: requestQuerySerializer,
      bodySerializer = globalBodySerializer ?? defaultBodySerializer,
      pathSerializer: requestPathSerializer,
      body,
      middleware: requestMiddlewares = [],
      ...init
    } = fetchOptions || {};
    let finalBaseUrl = baseUrl;
    if (localBaseUrl) {
      finalBaseUrl = removeTrailingSlash(localBaseUrl) ?? baseUrl;
    }
    let querySerializer = typeof globalQuerySerializer === "function" ? globalQuerySerializer : createQuerySerializer(globalQuerySerializer);
    if (requestQuerySerializer) {
      querySerializer = typeof requestQuerySerializer === "function" ? requestQuerySerializer : createQuerySerializer({
        ...typeof globalQuerySerializer === "object" ? globalQuerySerializer : {},
        ...requestQuerySerializer
      });
    }
    const pathSerializer = requestPathSerializer || globalPathSerializer || defaultPathSerializer;
    const serializedBody = body === void 0 ? void 0 : bodySerializer(
      body,
      // Note: we declare mergeHeaders() both here and below because it’s a bit of a chicken-or-egg situation:
      // bodySerializer() needs all headers so we aren’t dropping ones set by the user, however,
      // the result of this ALSO sets the lowest-priority content-type header. So we re-merge below,
      // setting the content-type at the very beginning to be overwritten.
      // Lastly, based on the way headers work, it’s not a simple “present-or-not” check becauase null intentionally un-sets headers.
      mergeHeaders(baseHeaders, headers, params.header)
    );
    const finalHeaders = mergeHeaders(
      // with no body, we should not to set Content-Type
      serializedBody === void 0 || // if serialized body is FormData; browser will correctly set Content-Type & boundary expression
      serializedBody instanceof FormData ? {} : {
        "Content-Type": "application/json"
      },
      baseHeaders,
      headers,
      params.header
    );
    const finalMiddlewares = [...globalMiddlewares, ...requestMiddlewares];
    const requestInit = {
      redirect: "follow",
      ...baseOptions,
      ...init,
      body: serializedBody,
      headers: finalHeaders
    };
    let id;
    let options;
    let request = new Request(
      createFinalURL(schemaPath, { baseUrl: finalBaseUrl, params, querySerializer, pathSerializer }),
      requestInit
    );
    let response;
    for (const key in init) {
      if (!(key in request)) {
        request[key] = init[key];
      }
    }
    if (finalMiddlewares.length) {
      id = randomID();
      options = Object.freeze({
        baseUrl: finalBaseUrl,
        fetch: fetch2,
        parseAs,
        querySerializer,
        bodySerializer,
        pathSerializer
      });
      for (const m of finalMiddlewares) {
        if (m && typeof m === "object" && typeof m.onRequest === "function") {
          const result = await m.onRequest({
            request,
            schemaPath,
            params,
            options,
            id
          });
          if (result) {
            if (result instanceof Request) {
              request = result;
            } else if (result instanceof Response) {
              response = result;
              break;
            } else {
              throw new Error("onRequest: must return new Request() or Response() when modifying the request");
            }
          }
        }
      }
    }
    if (!response) {
      try {
        response = await fetch2(request, requestInitExt);
      } catch (error2) {
        let errorAfterMiddleware = error2;
        if (finalMiddlewares.length) {
          for (let i = finalMiddlewares.length - 1; i >= 0; i--) {
            const m = finalMiddlewares[i];
            if (m && typeof m === "object" && typeof m.onError === "function") {
              const result = await m.onError({
                request,
                error: errorAfterMiddleware,
                schemaPath,
                params,
                options,
                id
              });
              if (result) {
                if (result instanceof Response) {
                  errorAfterMiddleware = void 0;
                  response = result;
                  break;
                }
                if (result instanceof Error) {
                  errorAfterMiddleware = result;
                  continue;
                }
                throw new Error("onError: must return new Response() or instance of Error");
              }
            }
          }
        }
        if (errorAfterMiddleware) {
          throw errorAfterMiddleware;
        }
      }
      if (finalMiddlewares.length) {
        for (let i = finalMiddlewares.length - 1; i >= 0; i--) {
          const m = finalMiddlewares[i];
          if (m && typeof m === "object" && typeof m.onResponse === "function") {
            const result = await m.onResponse({
              request,
              response,
              schemaPath,
              params,
              options,
              id
            });
            if (result) {
              if (!(result instanceof Response)) {
                throw new Error("onResponse: must return new Response() when modifying the response");
              }
              response = result;
            }
          }
        }
      }
    }
    const contentLength = response.headers.get("Content-Length");
    if (response.status === 204 || request.method === "HEAD" || contentLength === "0" && !response.headers.get("Transfer-Encoding")?.includes("chunked")) {
      return response.ok ? { data: void 0, response } : { error: void 0, response };
    }
    if (response.ok) {
      const getResponseData = async () => {
        if (parseAs === "stream") {
          return response.body;
        }
        if (parseAs === "json" && !contentLength) {
          const raw = await response.text();
          return raw ? JSON.parse(raw) : void 0;
        }
        return await response[parseAs]();
      };
      return { data: await getResponseData(), response };
    }
    let error = await response.text();
    try {
      error = JSON.parse(error);
    } catch {
    }
    return { error, response };
  }
  return {
    request(method, url, init) {
      return coreFetch(url, { ...init, method: method.toUpperCase() });
    },
    /** Call a GET endpoint */
    GET(url, init) {
      return coreFetch(url, { ...init, method: "GET" });
    },
    /** Call a PUT endpoint */
    PUT(url, init) {
      return coreFetch(url, { ...init, method: "PUT" });
    },
    /** Call a POST endpoint */
    POST(url, init) {
      return coreFetch(url, { ...init, method: "POST" });
    },
    /** Call a DELETE endpoint */
    DELETE(url, init) {
      return coreFetch(url, { ...init, method: "DELETE" });
    },
    /** Call a OPTIONS endpoint */
    OPTIONS(url, init) {
      return coreFetch(url, { ...init, method: "OPTIONS" });
    },
    /** Call a HEAD endpoint */
    HEAD(url, init) {
      return coreFetch(url, { ...init, method: "HEAD" });
    },
    /** Call a PATCH endpoint */
    PATCH(url, init) {
      return coreFetch(url, { ...init, method: "PATCH" });
    },
    /** Call a TRACE endpoint */
    TRACE(url, init) {
      return coreFetch(url, { ...init, method: "TRACE" });
    },
    /** Register middleware */
    use(...middleware) {
      for (const m of middleware) {
        if (!m) {
          continue;
        }
        if (typeof m !== "object" || !("onRequest" in m || "onResponse" in m || "onError" in m)) {
          throw new Error("Middleware must be an object with one of `onRequest()`, `onResponse() or `onError()`");
        }
        globalMiddlewares.push(m);
      }
    },
    /** Unregister middleware */
    eject(...middleware) {
      for (const m of middleware) {
        const i = globalMiddlewares.indexOf(m);
        if (i !== -1) {
          globalMiddlewares.splice(i, 1);
        }
      }
    }
  };
}
function serializePrimitiveParam(name, value, options) {
  if (value === void 0 || value === null) {
    return "";
  }
  if (typeof value === "object") {
    throw new Error(
      "Deeply-nested arrays/objects aren’t supported. Provide your own `querySerializer()` to handle these."
    );
  }
  return `${name}=${options?.allowReserved === true ? value : encodeURIComponent(value)}`;
}
function serializeObjectParam(name, value, options) {
  if (!value || typeof value !== "object") {
    return "";
  }
  const values = [];
  const joiner = {
    simple: ",",
    label: ".",
    matrix: ";"
  }[options.style] || "&";
  if (options.style !== "deepObject" && options.explode === false) {
    for (const k in value) {
      values.push(k, options.allowReserved === true ? value[k] : encodeURIComponent(value[k]));
    }
    const final2 = values.join(",");
    switch (options.style) {
      case "form": {
        return `${name}=${final2}`;
      }
      case "label": {
        return `.${final2}`;
      }
      case "matrix": {
        return `;${name}=${final2}`;
      }
      default: {
        return final2;
      }
    }
  }
  for (const k in value) {
    const finalName = options.style === "deepObject" ? `${name}[${k}]` : k;
    values.push(serializePrimitiveParam(finalName, value[k], options));
  }
  const final = values.join(joiner);
  return options.style === "label" || options.style === "matrix" ? `${joiner}${final}` : final;
}
function serializeArrayParam(name, value, options) {
  if (!Array.isArray(value)) {
    return "";
  }
  if (options.explode === false) {
    const joiner2 = { form: ",", spaceDelimited: "%20", pipeDelimited: "|" }[options.style] || ",";
    const final = (options.allowReserved === true ? value : value.map((v) => encodeURIComponent(v))).join(joiner2);
    switch (options.style) {
      case "simple": {
        return final;
      }
      case "label": {
        return `.${final}`;
      }
      case "matrix": {
        return `;${name}=${final}`;
      }
      // case "spaceDelimited":
      // case "pipeDelimited":
      default: {
        return `${name}=${final}`;
      }
    }
  }
  const joiner = { simple: ",", label: ".", matrix: ";" }[options.style] || "&";
  const values = [];
  for (const v of value) {
    if (options.style === "simple" || options.style === "label") {
      values.push(options.allowReserved === true ? v : encodeURIComponent(v));
    } else {
      values.push(serializePrimitiveParam(name, v, options));
    }
  }
  return options.style === "label" || options.style === "matrix" ? `${joiner}${values.join(joiner)}` : values.join(joiner);
}
function createQuerySerializer(options) {
  return function querySerializer(queryParams) {
    const search = [];
    if (queryParams && typeof queryParams === "object") {
      for (const name in queryParams) {
        const value = queryParams[name];
        if (value === void 0 || value === null) {
          continue;
        }
        if (Array.isArray(value)) {
          if (value.length === 0) {
            continue;
          }
          search.push(
            serializeArrayParam(name, value, {
              style: "form",
              explode: true,
              ...options?.array,
              allowReserved: options?.allowReserved || false
            })
          );
          continue;
        }
        if (typeof value === "object") {
          search.push(
            serializeObjectParam(name, value, {
              style: "deepObject",
              explode: true,
              ...options?.object,
              allowReserved: options?.allowReserved || false
            })
          );
          continue;
        }
        search.push(serializePrimitiveParam(name, value, options));
      }
    }
    return search.join("&");
  };
}
function defaultPathSerializer(pathname, pathParams) {
  let nextURL = pathname;
  for (const match of pathname.match(PATH_PARAM_RE) ?? []) {
    let name = match.substring(1, match.length - 1);
    let explode = false;
    let style = "simple";
    if (name.endsWith("*")) {
      explode = true;
      name = name.substring(0, name.length - 1);
    }
    if (name.startsWith(".")) {
      style = "label";
      name = name.substring(1);
    } else if (name.startsWith(";")) {
      style = "matrix";
      name = name.substring(1);
    }
    if (!pathParams || pathParams[name] === void 0 || pathParams[name] === null) {
      continue;
    }
    const value = pathParams[name];
    if (Array.isArray(value)) {
      nextURL = nextURL.replace(match, serializeArrayParam(name, value, { style, explode }));
      continue;
    }
    if (typeof value === "object") {
      nextURL = nextURL.replace(match, serializeObjectParam(name, value, { style, explode }));
      continue;
    }
    if (style === "matrix") {
      nextURL = nextURL.replace(match, `;${serializePrimitiveParam(name, value)}`);
      continue;
    }
    nextURL = nextURL.replace(match, style === "label" ? `.${encodeURIComponent(value)}` : encodeURIComponent(value));
  }
  return nextURL;
}
function defaultBodySerializer(body, headers) {
  if (body instanceof FormData) {
    return body;
  }
  if (headers) {
    const contentType = headers.get instanceof Function ? headers.get("Content-Type") ?? headers.get("content-type") : headers["Content-Type"] ?? headers["content-type"];
    if (contentType === "application/x-www-form-urlencoded") {
      return new URLSearchParams(body).toString();
    }
  }
  return JSON.stringify(body);
}
function createFinalURL(pathname, options) {
  let finalURL = `${options.baseUrl}${pathname}`;
  if (options.params?.path) {
    finalURL = options.pathSerializer(finalURL, options.params.path);
  }
  let search = options.querySerializer(options.params.query ?? {});
  if (search.startsWith("?")) {
    search = search.substring(1);
  }
  if (search) {
    finalURL += `?${search}`;
  }
  return finalURL;
}
function mergeHeaders(...allHeaders) {
  const finalHeaders = new Headers();
  for (const h2 of allHeaders) {
    if (!h2 || typeof h2 !== "object") {
      continue;
    }
    const iterator = h2 instanceof Headers ? h2.entries() : Object.entries(h2);
    for (const [k, v] of iterator) {
      if (v === null) {
        finalHeaders.delete(k);
      } else if (Array.isArray(v)) {
        for (const v2 of v) {
          finalHeaders.append(k, v2);
        }
      } else if (v !== void 0) {
        finalHeaders.set(k, v);
      }
    }
  }
  return finalHeaders;
}
function removeTrailingSlash(url) {
  if (url.endsWith("/")) {
    return url.substring(0, url.length - 1);
  }
  return url;
}

// ../clients/typescript/src/problem.ts
var ProblemError = class extends Error {
  name = "ProblemError";
  /** The HTTP status code. */
  status;
  /** A URI reference naming the problem type; "about:blank" when generic. */
  type;
  /** A short summary of the problem type. */
  title;
  /** What went wrong this time, for people. */
  detail;
  /** A URI reference to this occurrence. */
  instance;
  /** Every validation error (422), empty when there are none. */
  errors;
  /** Credits the request needed (402). */
  needed;
  /** Credits the user had available (402). */
  available;
  /** needed - available (402). */
  shortfall;
  /** Seconds to wait before retrying, from the Retry-After header (429, 503). */
  retryAfter;
  /** The job a 409 on cancel is about, unchanged. */
  job;
  /** The problem body as received (or built from the status when the body was not a problem). */
  problem;
  constructor(status, problem = {}, init = {}) {
    const title = problem.title || statusText(status);
    super(problem.detail ? `${status} ${title}: ${problem.detail}` : `${status} ${title}`);
    this.status = status;
    this.type = problem.type || "about:blank";
    this.title = title;
    this.detail = problem.detail;
    this.instance = problem.instance;
    this.errors = problem.errors ?? [];
    this.needed = num(problem.needed);
    this.available = num(problem.available);
    this.shortfall = num(problem.shortfall) ?? (this.needed !== void 0 && this.available !== void 0 ? this.needed - this.available : void 0);
    this.retryAfter = init.retryAfter;
    this.job = problem.job;
    this.problem = { ...problem, status, title, type: this.type };
  }
};
function problemFromResponse(response, body) {
  const problem = body !== null && typeof body === "object" && !Array.isArray(body) ? body : { detail: typeof body === "string" && body.trim() !== "" ? body.trim().slice(0, 500) : void 0 };
  return new ProblemError(response.status, problem, {
    retryAfter: parseRetryAfter(response.headers.get("Retry-After"))
  });
}
function parseRetryAfter(value, now = Date.now()) {
  if (value == null) return void 0;
  const v = value.trim();
  if (/^\d+$/.test(v)) return Number(v);
  const at = Date.parse(v);
  if (Number.isNaN(at)) return void 0;
  return Math.max(0, Math.ceil((at - now) / 1e3));
}
function isProblem(err, status) {
  return err instanceof ProblemError && (status === void 0 || err.status === status);
}
function num(v) {
  return typeof v === "number" && Number.isFinite(v) ? v : void 0;
}
var statusTexts = {
  400: "Bad Request",
  401: "Unauthorized",
  402: "Payment Required",
  403: "Forbidden",
  404: "Not Found",
  409: "Conflict",
  413: "Request Entity Too Large",
  422: "Unprocessable Entity",
  429: "Too Many Requests",
  500: "Internal Server Error",
  502: "Bad Gateway",
  503: "Service Unavailable",
  504: "Gateway Timeout"
};
function statusText(status) {
  return statusTexts[status] ?? `HTTP ${status}`;
}

// ../clients/typescript/node_modules/eventsource-parser/dist/index.js
var ParseError = class extends Error {
  constructor(message, options) {
    super(message), this.name = "ParseError", this.type = options.type, this.field = options.field, this.value = options.value, this.line = options.line;
  }
};
var LF = 10;
var CR = 13;
var SPACE = 32;
function noop(_arg) {
}
function createParser(config) {
  if (typeof config == "function")
    throw new TypeError(
      "`config` must be an object, got a function instead. Did you mean `createParser({onEvent: fn})`?"
    );
  const { onEvent = noop, onError = noop, onRetry = noop, onComment, maxBufferSize } = config, pendingFragments = [];
  let pendingFragmentsLength = 0, isFirstChunk = true, id, data = "", dataLines = 0, eventType, terminated = false;
  function feed(chunk) {
    if (terminated)
      throw new Error(
        "Cannot feed parser: it was terminated after exceeding the configured max buffer size. Call `reset()` to resume parsing."
      );
    if (isFirstChunk && (isFirstChunk = false, chunk.charCodeAt(0) === 239 && chunk.charCodeAt(1) === 187 && chunk.charCodeAt(2) === 191 && (chunk = chunk.slice(3))), pendingFragments.length === 0) {
      const trailing2 = processLines(chunk);
      trailing2 !== "" && (pendingFragments.push(trailing2), pendingFragmentsLength = trailing2.length), checkBufferSize();
      return;
    }
    if (chunk.indexOf(`
`) === -1 && chunk.indexOf("\r") === -1) {
      pendingFragments.push(chunk), pendingFragmentsLength += chunk.length, checkBufferSize();
      return;
    }
    pendingFragments.push(chunk);
    const input = pendingFragments.join("");
    pendingFragments.length = 0, pendingFragmentsLength = 0;
    const trailing = processLines(input);
    trailing !== "" && (pendingFragments.push(trailing), pendingFragmentsLength = trailing.length), checkBufferSize();
  }
  function checkBufferSize() {
    maxBufferSize !== void 0 && (pendingFragmentsLength + data.length <= maxBufferSize || (terminated = true, pendingFragments.length = 0, pendingFragmentsLength = 0, id = void 0, data = "", dataLines = 0, eventType = void 0, onError(
      new ParseError(`Buffered data exceeded max buffer size of ${maxBufferSize} characters`, {
        type: "max-buffer-size-exceeded"
      })
    )));
  }
  function processLines(chunk) {
    let searchIndex = 0;
    if (chunk.indexOf("\r") === -1) {
      let lfIndex = chunk.indexOf(`
`, searchIndex);
      for (; lfIndex !== -1; ) {
        if (searchIndex === lfIndex) {
          dataLines > 0 && onEvent({ id, event: eventType, data }), id = void 0, data = "", dataLines = 0, eventType = void 0, searchIndex = lfIndex + 1, lfIndex = chunk.indexOf(`
`, searchIndex);
          continue;
        }
        const firstCharCode = chunk.charCodeAt(searchIndex);
        if (isDataPrefix(chunk, searchIndex, firstCharCode)) {
          const valueStart = chunk.charCodeAt(searchIndex + 5) === SPACE ? searchIndex + 6 : searchIndex + 5, value = chunk.slice(valueStart, lfIndex);
          if (dataLines === 0 && chunk.charCodeAt(lfIndex + 1) === LF) {
            onEvent({ id, event: eventType, data: value }), id = void 0, data = "", eventType = void 0, searchIndex = lfIndex + 2, lfIndex = chunk.indexOf(`
`, searchIndex);
            continue;
          }
          data = dataLines === 0 ? value : `${data}
${value}`, dataLines++;
        } else isEventPrefix(chunk, searchIndex, firstCharCode) ? eventType = chunk.slice(
          chunk.charCodeAt(searchIndex + 6) === SPACE ? searchIndex + 7 : searchIndex + 6,
          lfIndex
        ) || void 0 : parseLine(chunk, searchIndex, lfIndex);
        searchIndex = lfIndex + 1, lfIndex = chunk.indexOf(`
`, searchIndex);
      }
      return chunk.slice(searchIndex);
    }
    for (; searchIndex < chunk.length; ) {
      const crIndex = chunk.indexOf("\r", searchIndex), lfIndex = chunk.indexOf(`
`, searchIndex);
      let lineEnd = -1;
      if (crIndex !== -1 && lfIndex !== -1 ? lineEnd = crIndex < lfIndex ? crIndex : lfIndex : crIndex !== -1 ? crIndex === chunk.length - 1 ? lineEnd = -1 : lineEnd = crIndex : lfIndex !== -1 && (lineEnd = lfIndex), lineEnd === -1)
        break;
      parseLine(chunk, searchIndex, lineEnd), searchIndex = lineEnd + 1, chunk.charCodeAt(searchIndex - 1) === CR && chunk.charCodeAt(searchIndex) === LF && searchIndex++;
    }
    return chunk.slice(searchIndex);
  }
  function parseLine(chunk, start, end) {
    if (start === end) {
      dispatchEvent();
      return;
    }
    const firstCharCode = chunk.charCodeAt(start);
    if (isDataPrefix(chunk, start, firstCharCode)) {
      const valueStart = chunk.charCodeAt(start + 5) === SPACE ? start + 6 : start + 5, value2 = chunk.slice(valueStart, end);
      data = dataLines === 0 ? value2 : `${data}
${value2}`, dataLines++;
      return;
    }
    if (isEventPrefix(chunk, start, firstCharCode)) {
      eventType = chunk.slice(chunk.charCodeAt(start + 6) === SPACE ? start + 7 : start + 6, end) || void 0;
      return;
    }
    if (firstCharCode === 105 && chunk.charCodeAt(start + 1) === 100 && chunk.charCodeAt(start + 2) === 58) {
      const value2 = chunk.slice(chunk.charCodeAt(start + 3) === SPACE ? start + 4 : start + 3, end);
      value2.includes("\0") || (id = value2);
      return;
    }
    if (firstCharCode === 58) {
      if (onComment) {
        const line2 = chunk.slice(start, end);
        onComment(line2.slice(chunk.charCodeAt(start + 1) === SPACE ? 2 : 1));
      }
      return;
    }
    const line = chunk.slice(start, end), fieldSeparatorIndex = line.indexOf(":");
    if (fieldSeparatorIndex === -1) {
      processField(line, "", line);
      return;
    }
    const field = line.slice(0, fieldSeparatorIndex), offset = line.charCodeAt(fieldSeparatorIndex + 1) === SPACE ? 2 : 1, value = line.slice(fieldSeparatorIndex + offset);
    processField(field, value, line);
  }
  function processField(field, value, line) {
    switch (field) {
      case "event":
        eventType = value || void 0;
        break;
      case "data":
        data = dataLines === 0 ? value : `${data}
${value}`, dataLines++;
        break;
      case "id":
        value.includes("\0") || (id = value);
        break;
      case "retry":
        /^\d+$/.test(value) ? onRetry(parseInt(value, 10)) : onError(
          new ParseError(`Invalid \`retry\` value: "${value}"`, {
            type: "invalid-retry",
            value,
            line
          })
        );
        break;
      default:
        onError(
          new ParseError(
            `Unknown field "${field.length > 20 ? `${field.slice(0, 20)}…` : field}"`,
            { type: "unknown-field", field, value, line }
          )
        );
        break;
    }
  }
  function dispatchEvent() {
    dataLines > 0 && onEvent({
      id,
      event: eventType,
      data
    }), id = void 0, data = "", dataLines = 0, eventType = void 0;
  }
  function reset(options = {}) {
    if (options.consume && pendingFragments.length > 0) {
      const incompleteLine = pendingFragments.join("");
      parseLine(incompleteLine, 0, incompleteLine.length);
    }
    isFirstChunk = true, id = void 0, data = "", dataLines = 0, eventType = void 0, pendingFragments.length = 0, pendingFragmentsLength = 0, terminated = false;
  }
  return { feed, reset };
}
function isDataPrefix(chunk, i, firstCharCode) {
  return firstCharCode === 100 && chunk.charCodeAt(i + 1) === 97 && chunk.charCodeAt(i + 2) === 116 && chunk.charCodeAt(i + 3) === 97 && chunk.charCodeAt(i + 4) === 58;
}
function isEventPrefix(chunk, i, firstCharCode) {
  return firstCharCode === 101 && chunk.charCodeAt(i + 1) === 118 && chunk.charCodeAt(i + 2) === 101 && chunk.charCodeAt(i + 3) === 110 && chunk.charCodeAt(i + 4) === 116 && chunk.charCodeAt(i + 5) === 58;
}

// ../clients/typescript/src/types.ts
var FINAL_STATES = ["succeeded", "failed", "cancelled"];
function isFinal(job) {
  return FINAL_STATES.includes(job.state);
}

// ../clients/typescript/src/wait.ts
var jobEvents = { state: true, progress: true };
var maxDrops = 3;
function waitForJob(t, id, opts = {}) {
  return follow(
    {
      what: `job ${id}`,
      read: (wait, signal) => t.getJob(id, wait, signal),
      openEvents: (signal) => t.openEvents(id, signal),
      fromEvent: (ev) => ev.event !== void 0 && Object.hasOwn(jobEvents, ev.event) ? jobFromEvent(id, ev.data) : void 0,
      isFinal,
      hasChanged
    },
    opts
  );
}
async function follow(f, opts = {}) {
  const { signal, onUpdate, transport = "auto" } = opts;
  const pollWait = Math.min(30, Math.max(1, Math.round(opts.pollWait ?? 25)));
  const maxRetries = Math.max(0, opts.maxRetries ?? 5);
  const idleTimeout = Math.max(1e3, opts.idleTimeout ?? 6e4);
  let last;
  let callbackError;
  const see = (v) => {
    const changed = last === void 0 || f.hasChanged(last, v);
    last = v;
    if (changed && onUpdate && !callbackError) {
      try {
        onUpdate(v);
      } catch (error) {
        callbackError = { error };
      }
    }
    return f.isFinal(v) || callbackError !== void 0;
  };
  const done = () => {
    if (callbackError) throw callbackError.error;
    return last;
  };
  const read = (wait) => withRetries(() => f.read(wait, signal), maxRetries, signal);
  if (see(await read())) return done();
  let sse = transport !== "poll";
  let drops = 0;
  let quiet = 0;
  for (; ; ) {
    signal?.throwIfAborted();
    if (sse) {
      let outcome;
      let events = 0;
      try {
        const r = await followEvents(f, (v) => (events++, see(v)), idleTimeout, signal);
        outcome = r;
      } catch (err) {
        if (signal?.aborted) throw signal.reason;
        if (transport === "sse" && !(events > 0 && isNetworkError(err))) throw err;
        outcome = events > 0 ? "ended" : "unavailable";
      }
      if (outcome === "final") return done();
      if (outcome === "unavailable") {
        sse = false;
      } else if (outcome === "ended") {
        drops = events > 0 ? 1 : drops + 1;
        if (drops >= maxDrops) {
          if (transport === "sse") throw new Error(`aiqueue: the event stream of ${f.what} closed ${drops} times before it ended`);
          sse = false;
        }
      }
      if (see(await read())) return done();
      if (sse && outcome === "ended") await sleep(backoff(drops - 1), signal);
      continue;
    }
    const before = last;
    const started = Date.now();
    if (see(await read(pollWait))) return done();
    if (!f.hasChanged(before, last) && Date.now() - started < 1e3) {
      await sleep(Math.min(5e3, 500 * 2 ** quiet), signal);
      quiet = Math.min(quiet + 1, 4);
    } else {
      quiet = 0;
    }
  }
}
async function followEvents(f, onValue, idleTimeout, signal) {
  const conn = new AbortController();
  const abortConn = () => conn.abort(signal?.reason);
  signal?.addEventListener("abort", abortConn, { once: true });
  let idle = false;
  let timer;
  const arm = () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      idle = true;
      conn.abort();
    }, idleTimeout);
  };
  let final = false;
  try {
    arm();
    const stream = await f.openEvents(conn.signal);
    const reader = stream.getReader();
    const cancel = () => void reader.cancel(conn.signal.reason).catch(() => {
    });
    conn.signal.addEventListener("abort", cancel, { once: true });
    if (conn.signal.aborted) cancel();
    const decoder = new TextDecoder();
    const parser = createParser({
      onEvent(ev) {
        if (final) return;
        const v = f.fromEvent(ev);
        if (v !== void 0 && onValue(v)) final = true;
      }
    });
    try {
      while (!final) {
        const { done, value } = await reader.read();
        if (done) break;
        arm();
        parser.feed(decoder.decode(value, { stream: true }));
      }
    } catch (err) {
      if (!idle || signal?.aborted) throw err;
    } finally {
      conn.signal.removeEventListener("abort", cancel);
      void reader.cancel().catch(() => {
      });
    }
    if (final) return "final";
    signal?.throwIfAborted();
    return idle ? "idle" : "ended";
  } catch (err) {
    if (idle && !signal?.aborted) return "idle";
    throw err;
  } finally {
    clearTimeout(timer);
    signal?.removeEventListener("abort", abortConn);
    conn.abort();
  }
}
function jobFromEvent(id, data) {
  let v;
  try {
    v = JSON.parse(data);
  } catch {
    return void 0;
  }
  return isJob(v) && v.id === id ? v : void 0;
}
function isJob(v) {
  return v !== null && typeof v === "object" && typeof v.id === "string" && typeof v.state === "string";
}
function hasChanged(a, b) {
  return a.state !== b.state || a.queue_position !== b.queue_position || a.attempt !== b.attempt || // progress (stage, fal queue position, ETA ...) when the server sends it.
  JSON.stringify(a.progress) !== JSON.stringify(b.progress);
}
async function withRetries(fn, maxRetries, signal) {
  for (let attempt = 0; ; attempt++) {
    try {
      return await fn();
    } catch (err) {
      if (signal?.aborted) throw signal.reason;
      if (attempt >= maxRetries || !isTransient(err)) throw err;
      const delay = err instanceof ProblemError && err.retryAfter !== void 0 ? err.retryAfter * 1e3 : backoff(attempt);
      await sleep(delay, signal);
    }
  }
}
function isTransient(err) {
  if (err instanceof ProblemError) return [408, 429, 502, 503, 504].includes(err.status);
  return isNetworkError(err);
}
function isNetworkError(err) {
  return err instanceof TypeError && /fetch|network|terminated|load failed/i.test(err.message);
}
function backoff(attempt) {
  const base = Math.min(1e4, 500 * 2 ** Math.max(0, attempt));
  return base * (0.8 + Math.random() * 0.4);
}
function sleep(ms, signal) {
  return new Promise((resolve2, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve2();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

// ../clients/typescript/src/client.ts
async function unwrap(call) {
  const { data, error, response } = await call;
  if (!response.ok) throw problemFromResponse(response, error);
  return data;
}
function createClient2(options) {
  const raw = createClient({
    baseUrl: options.baseUrl,
    headers: options.headers,
    fetch: options.fetch
  });
  const tokenSource = options.getToken ?? (() => options.token);
  const auth = {
    async onRequest({ request }) {
      const token = await tokenSource();
      if (token) request.headers.set("Authorization", `Bearer ${token}`);
      return request;
    }
  };
  raw.use(auth);
  const getJob = (id, opts = {}) => unwrap(
    raw.GET("/v1/jobs/{id}", {
      params: { path: { id }, query: opts.wait !== void 0 ? { wait: opts.wait } : void 0 },
      signal: opts.signal
    })
  );
  const transport = {
    getJob: (id, wait, signal) => getJob(id, { wait, signal }),
    async openEvents(id, signal) {
      const { data, error, response } = await raw.GET("/v1/jobs/{id}/events", {
        params: { path: { id } },
        headers: { Accept: "text/event-stream" },
        parseAs: "stream",
        signal
      });
      if (!response.ok) throw problemFromResponse(response, error);
      const type = response.headers.get("Content-Type") ?? "";
      if (!data || !type.includes("text/event-stream")) {
        await response.body?.cancel().catch(() => {
        });
        throw new Error(`aiqueue: GET /v1/jobs/${id}/events answered ${type || "no content type"}, not an event stream`);
      }
      return data;
    }
  };
  return {
    raw,
    submitJob: (body, opts = {}) => unwrap(
      raw.POST("/v1/jobs", {
        body,
        params: { header: idempotency(opts.idempotencyKey) },
        signal: opts.signal
      })
    ),
    getJob,
    cancelJob: (id, opts = {}) => unwrap(raw.POST("/v1/jobs/{id}/cancel", { params: { path: { id } }, signal: opts.signal })),
    listJobs: (query, opts = {}) => unwrap(raw.GET("/v1/jobs", { params: { query }, signal: opts.signal })),
    submitBatch: (body, opts = {}) => unwrap(
      raw.POST("/v1/batches", {
        body,
        params: { header: idempotency(opts.idempotencyKey) },
        signal: opts.signal
      })
    ),
    getBatch: (id, opts = {}) => unwrap(raw.GET("/v1/batches/{id}", { params: { path: { id } }, signal: opts.signal })),
    getCredits: (opts = {}) => unwrap(raw.GET("/v1/credits", { signal: opts.signal })),
    listOperations: async (opts = {}) => (await unwrap(raw.GET("/v1/operations", { signal: opts.signal }))).operations ?? [],
    waitForJob: (id, opts) => waitForJob(transport, id, opts)
  };
}
function idempotency(key) {
  return key ? { "Idempotency-Key": key } : void 0;
}

// ../clients/typescript/src/results.ts
function resultUrls(job) {
  const r = job.result;
  if (job.state !== "succeeded" || r === null || typeof r !== "object") return [];
  const urls = [];
  const add = (file) => {
    if (file !== null && typeof file === "object" && typeof file.url === "string") {
      urls.push(file.url);
    }
  };
  const { images, image, video } = r;
  if (Array.isArray(images)) images.forEach(add);
  add(image);
  add(video);
  return urls;
}

// src/playground.ts
var $ = (id) => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`playground: no #${id}`);
  return el;
};
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === void 0 || v === false) continue;
    if (k === "text") el.textContent = String(v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== void 0) el.append(c);
  return el;
}
var apiInput = $("api-base");
var tokenInput = $("token");
var demoButton = $("use-demo-token");
var connectButton = $("connect");
var creditsOut = $("credits");
var form = $("submit-form");
var opSelect = $("operation");
var opInfo = $("operation-info");
var paramsBox = $("params");
var extraInput = $("extra-params");
var prioritySelect = $("priority");
var submitButton = $("submit");
var errorBox = $("error");
var jobsList = $("jobs");
var demoToken = document.querySelector('meta[name="aiqueue-demo-token"]')?.content ?? "";
var client;
var doc;
var operations = [];
apiInput.value = new URLSearchParams(location.search).get("api") ?? location.origin;
tokenInput.value = sessionStorage.getItem("aiqueue-token") ?? "";
if (demoToken) {
  demoButton.hidden = false;
  demoButton.addEventListener("click", () => {
    tokenInput.value = demoToken;
    void connect();
  });
}
connectButton.addEventListener("click", () => void connect());
opSelect.addEventListener("change", () => showParams());
form.addEventListener("submit", (ev) => {
  ev.preventDefault();
  void submit();
});
function showError(err) {
  errorBox.replaceChildren();
  if (err === void 0) {
    errorBox.hidden = true;
    return;
  }
  errorBox.hidden = false;
  if (err instanceof ProblemError) {
    errorBox.append(h("strong", { text: `${err.status} ${err.title}` }), ": " + (err.detail ?? ""));
    if (err.errors.length > 0) {
      errorBox.append(h("ul", {}, ...err.errors.map((e) => h("li", { text: `${e.location ?? ""}: ${e.message ?? ""}` }))));
    }
    if (err.retryAfter !== void 0) errorBox.append(h("p", { text: `Retry after ${err.retryAfter} s.` }));
  } else {
    errorBox.append(String(err instanceof Error ? err.message : err));
  }
}
async function connect() {
  showError(void 0);
  const token = tokenInput.value.trim();
  if (!token) {
    showError(new Error("Paste a bearer token first."));
    return;
  }
  sessionStorage.setItem("aiqueue-token", token);
  client = createClient2({ baseUrl: apiInput.value.replace(/\/+$/, ""), token });
  try {
    [doc, operations] = await Promise.all([
      fetch(new URL("openapi.json", location.href)).then((r) => {
        if (!r.ok) throw new Error(`openapi.json: ${r.status}`);
        return r.json();
      }),
      client.listOperations()
    ]);
  } catch (err) {
    showError(err);
    return;
  }
  opSelect.replaceChildren(
    ...operations.map((o) => h("option", { value: o.operation, text: `${o.operation} (${o.cost} credits, ${o.kind})` }))
  );
  form.hidden = false;
  showParams();
  await refreshCredits();
}
async function refreshCredits() {
  if (!client) return;
  try {
    const c = await client.getCredits();
    creditsOut.value = `${c.available} credits available (balance ${c.balance}, reserved ${c.reserved})`;
  } catch (err) {
    showError(err);
  }
}
function resolve(s) {
  const ref = s?.$ref;
  if (!ref || !doc) return s;
  return doc.components.schemas[ref.replace("#/components/schemas/", "")];
}
function paramsSchema(op) {
  const union = doc?.components.schemas["JobRequest"];
  const member = resolve({ $ref: union?.discriminator?.mapping[op] ?? "" });
  return resolve(member?.properties?.["params"]);
}
function showParams() {
  const op = operations.find((o) => o.operation === opSelect.value);
  if (!op) return;
  const price = op.max_cost > op.cost ? `${op.cost} to ${op.max_cost} credits, by its params` : `${op.cost} credits`;
  opInfo.textContent = `${op.description ?? ""} Default queue: ${op.priority}. Price: ${price}.`;
  const schema = paramsSchema(op.operation);
  const required = new Set(schema?.required ?? []);
  const fields = [];
  for (const [name, prop] of Object.entries(schema?.properties ?? {})) {
    const id = `param-${name}`;
    const req = required.has(name);
    const label = h("label", { for: id }, name, req ? h("span", { class: "req", text: " (required)" }) : null);
    let input;
    if (prop.enum || prop.type === "boolean") {
      const values = (prop.enum ?? [true, false]).map(String);
      input = h(
        "select",
        { id, "data-param": name, "data-kind": prop.type === "boolean" ? "boolean" : "string", required: req },
        h("option", { value: "", text: req ? "(choose)" : "(default)" }),
        ...values.map((v) => h("option", { value: v, text: v }))
      );
    } else if (prop.anyOf) {
      input = h("input", { id, type: "text", "data-param": name, "data-kind": "json-or-string", required: req, placeholder: 'square_hd, or {"width": 1024, "height": 768}' });
    } else if (prop.type === "array") {
      input = h("textarea", { id, rows: "2", "data-param": name, "data-kind": "list", required: req, placeholder: "one per line" });
    } else if (prop.type === "integer" || prop.type === "number") {
      input = h("input", {
        id,
        type: "number",
        "data-param": name,
        "data-kind": "number",
        required: req,
        min: prop.minimum?.toString(),
        max: prop.maximum?.toString()
      });
    } else if (name === "prompt") {
      input = h("textarea", { id, rows: "2", "data-param": name, "data-kind": "string", required: req });
    } else {
      input = h("input", { id, type: "text", "data-param": name, "data-kind": "string", required: req });
    }
    const help = h("small", { id: id + "-help", text: prop.description ?? "" });
    input.setAttribute("aria-describedby", help.id);
    fields.push(h("div", { class: "field" }, label, input, help));
  }
  paramsBox.replaceChildren(...fields);
}
function readParams() {
  const params = {};
  const extra = extraInput.value.trim();
  if (extra) {
    const v = JSON.parse(extra);
    if (v === null || typeof v !== "object" || Array.isArray(v)) throw new Error("Extra params must be a JSON object.");
    Object.assign(params, v);
  }
  for (const el of paramsBox.querySelectorAll("[data-param]")) {
    const value = el.value.trim();
    if (!value) continue;
    const name = el.dataset["param"];
    const kind = el.dataset["kind"];
    if (kind === "list") params[name] = value.split(/\s*\n\s*/).filter(Boolean);
    else if (kind === "number") params[name] = Number(value);
    else if (kind === "boolean") params[name] = value === "true";
    else if (kind === "json-or-string" && value.startsWith("{")) params[name] = JSON.parse(value);
    else params[name] = value;
  }
  return params;
}
async function submit() {
  if (!client) return;
  showError(void 0);
  let body;
  try {
    body = { operation: opSelect.value, params: readParams() };
  } catch (err) {
    showError(err);
    return;
  }
  if (prioritySelect.value) body.priority = prioritySelect.value;
  submitButton.disabled = true;
  try {
    const job = await client.submitJob(body);
    follow2(client, job);
    await refreshCredits();
  } catch (err) {
    showError(err);
  } finally {
    submitButton.disabled = false;
  }
}
function follow2(c, job) {
  const card = h("li", { class: "job", "data-job-id": job.id });
  jobsList.prepend(card);
  const render = (j) => renderJob(c, card, j);
  render(job);
  c.waitForJob(job.id, { onUpdate: render }).then(render).catch((err) => {
    card.append(h("p", { class: "problem", role: "alert", text: `Stopped following: ${err instanceof Error ? err.message : String(err)}` }));
  }).finally(() => void refreshCredits());
}
function renderJob(c, card, j) {
  card.dataset["state"] = j.state;
  const facts = [
    ["State", j.state],
    ["Operation", `${j.operation} (${j.priority})`],
    ["Credits", `${j.credits.amount} ${j.credits.state}`]
  ];
  if (j.queue_position !== void 0 && j.queue_position !== null) facts.push(["Queue position", String(j.queue_position)]);
  facts.push(["Attempt", `${j.attempt} of ${j.max_attempts}`]);
  const p = j.progress;
  if (p) {
    if (p.stage) facts.push(["Stage", p.stage]);
    if (p.fal_queue_position !== void 0 && p.fal_queue_position !== null) facts.push(["fal queue position", String(p.fal_queue_position)]);
    if (p.eta_seconds !== void 0 && p.eta_seconds !== null) facts.push(["ETA", `about ${Math.round(p.eta_seconds)} s`]);
    const last = p.logs?.at(-1);
    if (last) facts.push(["Log", last.message]);
  }
  if (j.error) facts.push(["Error", `${j.error.code}: ${j.error.message}`]);
  const cancel = h("button", { type: "button", class: "cancel", text: "Cancel", disabled: isFinal(j) });
  cancel.setAttribute("aria-label", `Cancel job ${j.id}`);
  cancel.addEventListener("click", () => {
    cancel.disabled = true;
    c.cancelJob(j.id).then(
      (after) => renderJob(c, card, after),
      (err) => {
        if (isProblem(err, 409) && err.job) renderJob(c, card, err.job);
        else showError(err);
      }
    );
  });
  const media = [];
  const video = j.result?.video?.url;
  for (const url of resultUrls(j)) {
    media.push(
      url === video ? h("video", { src: url, controls: true, preload: "none", "aria-label": `Video of job ${j.id}` }) : h("img", { src: url, alt: `Image ${media.length + 1} of job ${j.id}`, loading: "lazy" })
    );
    media.push(h("a", { href: url, target: "_blank", rel: "noopener noreferrer", text: url }));
  }
  card.replaceChildren(
    h("h3", { text: `Job ${j.id}` }),
    h("dl", {}, ...facts.flatMap(([k, v]) => [h("dt", { text: k }), h("dd", { "data-fact": k, text: v })])),
    cancel
  );
  if (media.length) card.append(h("div", { class: "results" }, ...media));
}
