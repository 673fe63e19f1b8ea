/**
 * A step's `filter`: which workspace files it sees and which enter its key.
 *
 * Patterns are paths relative to the workspace root (a leading `/` or `./` is
 * dropped), matched against every entry of the checkout:
 * - `*` matches any run of characters but `/`, `?` one character but `/`,
 *   `[abc]`/`[!abc]` a character class, `{a,b}` either alternative;
 * - `**` as a whole path component matches any number of components (none too);
 * - a pattern that matches a directory matches everything under it (so a bare
 *   directory name, `src`, keeps the whole directory), `*` and `**` match names
 *   starting with `.`;
 * - `!pattern` excludes; for each entry the last pattern that matches it, or one
 *   of its parent directories, decides; an entry no pattern matches is excluded.
 * The top-level `.git` is never part of the workspace unless a pattern starts with
 * `.git` (`!.git/...` included).
 */

export interface CompiledPattern {
  /** The pattern as written. */
  text: string
  negated: boolean
  re: RegExp
  /** Only a pattern whose first component is literally `.git` reaches into the top-level `.git`. */
  git: boolean
}

/** Why a filter pattern is refused, or undefined when it is fine. */
export function patternProblem (pattern: string): string | undefined {
  const body = pattern.startsWith('!') ? pattern.slice(1) : pattern
  const p = stripPattern(body)
  if (p === '' || p.includes('\0')) return `"${pattern}" is not a path or glob`
  if (p.split('/').includes('..')) return `"${pattern}" leaves the workspace ("..")`
  let depth = 0
  for (const c of p) {
    if (c === '{') depth++
    else if (c === '}') depth--
    if (depth < 0) break
  }
  if (depth !== 0) return `"${pattern}" has unbalanced braces`
  try {
    globToRegExp(p)
  } catch {
    return `"${pattern}" is not a valid glob`
  }
  return undefined
}

function stripPattern (p: string): string {
  let s = p
  while (s.startsWith('./')) s = s.slice(2)
  s = s.replace(/^\/+/, '').replace(/\/+$/, '')
  return s.split('/').filter((c) => c !== '' && c !== '.').join('/')
}

export function compileFilter (patterns: readonly string[]): CompiledPattern[] {
  return patterns.map((text) => {
    const negated = text.startsWith('!')
    const p = stripPattern(negated ? text.slice(1) : text)
    return { text, negated, re: globToRegExp(p), git: p === '.git' || p.startsWith('.git/') }
  })
}

/** The whole-path regular expression for a glob (relative, `/`-separated). */
export function globToRegExp (glob: string): RegExp {
  const parts = glob.split('/')
  let src = ''
  for (let i = 0; i < parts.length; i++) {
    const part = parts[i]!
    const last = i === parts.length - 1
    if (part === '**') {
      // a/**/b: zero or more components between; a/**: everything below a (and a itself); **: anything.
      if (last) src += i === 0 ? '.*' : '(?:/.*)?'
      else src += i === 0 ? '(?:.*/)?' : '(?:/.*)?/'
      continue
    }
    if (i > 0 && parts[i - 1] !== '**') src += '/'
    src += componentToRegExp(part)
  }
  return new RegExp(`^${src}$`, 's')
}

function componentToRegExp (c: string): string {
  let out = ''
  for (let i = 0; i < c.length; i++) {
    const ch = c[i]!
    if (ch === '*') {
      while (c[i + 1] === '*') i++
      out += '[^/]*'
    } else if (ch === '?') {
      out += '[^/]'
    } else if (ch === '[') {
      const end = c.indexOf(']', i + 2)
      if (end === -1) {
        out += '\\['
        continue
      }
      let body = c.slice(i + 1, end)
      if (body.startsWith('!')) body = `^${body.slice(1)}`
      out += `[${body.replace(/\\/g, '\\\\').replace(/\//g, '')}]`
      i = end
    } else if (ch === '{') {
      const end = matchingBrace(c, i)
      if (end === -1) {
        out += '\\{'
        continue
      }
      out += `(?:${splitAlternatives(c.slice(i + 1, end)).map(componentToRegExp).join('|')})`
      i = end
    } else {
      out += ch.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')
    }
  }
  return out
}

function matchingBrace (s: string, open: number): number {
  let depth = 0
  for (let i = open; i < s.length; i++) {
    if (s[i] === '{') depth++
    else if (s[i] === '}' && --depth === 0) return i
  }
  return -1
}

function splitAlternatives (s: string): string[] {
  const out: string[] = []
  let depth = 0
  let start = 0
  for (let i = 0; i < s.length; i++) {
    if (s[i] === '{') depth++
    else if (s[i] === '}') depth--
    else if (s[i] === ',' && depth === 0) {
      out.push(s.slice(start, i))
      start = i + 1
    }
  }
  out.push(s.slice(start))
  return out
}

/** One entry of the checkout, in walk order (a directory before what it holds). */
export interface FilterEntry {
  /** Path relative to the workspace root, `/`-separated. */
  rel: string
  /** Index of the parent directory in the same list, -1 at the top. */
  parent: number
  dir: boolean
}

export interface FilterResult {
  /** Per entry: the step sees it (it is kept, or a directory leading to a kept entry). */
  visible: Uint8Array
  /** The top-most entries the step does not see: each becomes one whiteout. */
  hidden: string[]
  /** Patterns that matched no entry. */
  unmatched: string[]
}

/**
 * Decides each entry; `patterns` null means no filter: everything but the top-level
 * `.git`. `never` (relative paths) are left out whatever the patterns say.
 */
export function applyFilter (entries: readonly FilterEntry[], patterns: readonly CompiledPattern[] | null, never: readonly string[] = []): FilterResult {
  const n = entries.length
  const visible = new Uint8Array(n)
  // The index of the last pattern matching the entry or a parent of it, -1 for none.
  const last = new Int32Array(n)
  const matched = new Uint8Array(patterns?.length ?? 0)
  for (let i = 0; i < n; i++) {
    const e = entries[i]!
    const inGit = e.rel === '.git' || e.rel.startsWith('.git/')
    if (never.some((n) => e.rel === n || e.rel.startsWith(`${n}/`))) {
      last[i] = -1
      continue
    }
    if (patterns === null) {
      visible[i] = inGit ? 0 : 1
      continue
    }
    const inherited = e.parent >= 0 ? last[e.parent]! : -1
    let found = inherited
    for (let k = patterns.length - 1; k >= 0; k--) {
      // Below `found` a match changes nothing: test only to learn whether the pattern matches at all.
      if (k <= found && matched[k] === 1) break
      const p = patterns[k]!
      if (inGit && !p.git) continue
      if (p.re.test(e.rel)) {
        matched[k] = 1
        if (k > found) found = k
      }
    }
    last[i] = found
    visible[i] = found >= 0 && !patterns[found]!.negated ? 1 : 0
  }
  // A directory holding a kept entry is seen too; the children come after their parent.
  for (let i = n - 1; i >= 0; i--) {
    if (visible[i] === 1) {
      const p = entries[i]!.parent
      if (p >= 0) visible[p] = 1
    }
  }
  const hidden: string[] = []
  for (let i = 0; i < n; i++) {
    if (visible[i] === 1) continue
    const p = entries[i]!.parent
    if (p < 0 || visible[p] === 1) hidden.push(entries[i]!.rel)
  }
  const unmatched = patterns === null ? [] : patterns.filter((_, k) => matched[k] === 0).map((p) => p.text)
  return { visible, hidden, unmatched }
}
