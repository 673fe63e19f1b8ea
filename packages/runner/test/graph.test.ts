import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import fc from 'fast-check'
import { parsePipeline, renderDot, renderGraph, stepGraph } from '../src/index.ts'
import type { Pipeline } from '../src/index.ts'

/** A pipeline of `true` steps: `[name, use]`, `use` undefined for none. */
function pipeline (steps: Array<[string, string[]?]>): Pipeline {
  const body = steps.map(([name, use]) => `  - name: ${name}\n    run: "true"${use !== undefined ? `\n    use: [${use.join(', ')}]` : ''}`)
  return parsePipeline(`base: host\nsteps:\n${body.join('\n')}\n`)
}

const DIAMOND: Array<[string, string[]?]> = [['system'], ['node-deps', ['system']], ['py-deps', ['system']], ['test', ['node-deps', 'py-deps']]]

test('order puts each step after those it uses and keeps file order where the graph leaves it free', () => {
  assert.deepEqual(stepGraph(pipeline(DIAMOND)).order, ['system', 'node-deps', 'py-deps', 'test'])
  // Forward references: each step moves only as far as it must.
  const g = stepGraph(pipeline([['test', ['lint', 'deps']], ['docs', []], ['lint', ['deps']], ['deps', []], ['last']]))
  assert.deepEqual(g.order, ['docs', 'deps', 'lint', 'test', 'last'])
  assert.deepEqual(g.parents.get('test'), ['lint', 'deps'])
  assert.deepEqual(g.parents.get('last'), ['deps'])
  assert.deepEqual(g.children.get('deps'), ['test', 'lint', 'last'])
  assert.deepEqual(g.children.get('test'), [])
})

test('ancestors merge the parents\' stacks in listed order, each step once where it first appears', () => {
  const g = stepGraph(pipeline(DIAMOND))
  assert.deepEqual(g.ancestors('test'), ['system', 'node-deps', 'py-deps'])
  assert.deepEqual(g.ancestors('node-deps'), ['system'])
  assert.deepEqual(g.ancestors('system'), [])
  // The listed order decides which branch lies on top.
  assert.deepEqual(stepGraph(pipeline([...DIAMOND.slice(0, 3), ['test', ['py-deps', 'node-deps']]])).ancestors('test'), ['system', 'py-deps', 'node-deps'])
  // A parent listed last that is already below an earlier one stays below it: b was built on a.
  const h = stepGraph(pipeline([['a'], ['b'], ['c', ['b', 'a']], ['d', ['a']], ['e', ['c', 'd', 'b']], ['f', []]]))
  assert.deepEqual(h.ancestors('c'), ['a', 'b'])
  assert.deepEqual(h.ancestors('e'), ['a', 'b', 'c', 'd'])
  assert.deepEqual(h.ancestors('f'), [])
  assert.throws(() => h.ancestors('nope'), TypeError)
})

test('for any graph: order is topological, ancestors are the steps it builds on, each after its own, each parent\'s stack in order', () => {
  const graphs = fc.integer({ min: 1, max: 12 }).chain((n) => fc.record({
    // Step i may use any step before it in the graph; file order is a shuffle of that, to get forward references.
    uses: fc.tuple(...Array.from({ length: n }, (_, i) => fc.option(fc.shuffledSubarray(Array.from({ length: i }, (_, j) => j)), { nil: undefined }))),
    file: fc.shuffledSubarray(Array.from({ length: n }, (_, i) => i), { minLength: n, maxLength: n })
  }))
  fc.assert(fc.property(graphs, ({ uses, file }) => {
    // Without `use`, a step uses the one before it in the file: give every step a use so the graph is the generated one.
    const steps = file.map((i): [string, string[]] => [`s${i}`, (uses[i] ?? []).map((j) => `s${j}`)])
    const p = pipeline(steps)
    const g = stepGraph(p)
    const at = new Map(g.order.map((s, i) => [s, i]))
    assert.equal(g.order.length, steps.length)
    for (const [name, use] of steps) {
      for (const u of use) assert.ok(at.get(u)! < at.get(name)!, `${u} before ${name}`)
      const below = g.ancestors(name)
      // Exactly the transitive closure of use, each once.
      const closure = new Set<string>()
      const visit = (s: string): void => {
        for (const u of g.parents.get(s)!) {
          if (!closure.has(u)) {
            closure.add(u)
            visit(u)
          }
        }
      }
      visit(name)
      assert.deepEqual(new Set(below), closure)
      assert.equal(below.length, closure.size)
      // Every step lies above the steps it builds on.
      for (const [k, s] of below.entries()) for (const a of g.ancestors(s)) assert.ok(below.indexOf(a) < k, `${a} below ${s} in the stack of ${name}`)
      // The first parent's stack is the bottom of the merge, as it is.
      if (use.length > 0) assert.deepEqual(below.slice(0, g.ancestors(use[0]!).length + 1), [...g.ancestors(use[0]!), use[0]!])
    }
  }), { numRuns: 300 })
})

test('a pipeline built in code with an unknown name or a cycle is a TypeError', () => {
  const p = pipeline([['a'], ['b']])
  assert.throws(() => stepGraph({ steps: [{ ...p.steps[0]!, use: ['nope'] }] }), TypeError)
  assert.throws(() => stepGraph({ steps: [{ ...p.steps[0]!, use: ['b'] }, { ...p.steps[1]!, use: ['a'] }] }), /cycle among a, b/)
})

test('renderGraph: a line per step in order with what it uses and its state, aligned', () => {
  // test first in the file: the lines follow the graph. system needs `use: []`, else it would use test, the step before it.
  const p = pipeline([['test', ['node-deps', 'py-deps']], ['system', []], ...DIAMOND.slice(1, 3)])
  assert.equal(renderGraph(p), [
    'system     <- (base)',
    'node-deps  <- system',
    'py-deps    <- system',
    'test       <- node-deps, py-deps',
    ''
  ].join('\n'))
  const states = new Map([['system', 'would hit'], ['node-deps', 'would hit'], ['py-deps', 'would run'], ['test', 'would run (cache: false)']])
  assert.equal(renderGraph(p, states), [
    'system     <- (base)              [would hit]',
    'node-deps  <- system              [would hit]',
    'py-deps    <- system              [would run]',
    'test       <- node-deps, py-deps  [would run (cache: false)]',
    ''
  ].join('\n'))
})

/** The statements of a dot graph as renderDot writes them: one a line between the braces. */
function dotStatements (dot: string): string[] {
  const lines = dot.trimEnd().split('\n')
  assert.equal(lines[0], 'digraph strata {')
  assert.equal(lines.at(-1), '}')
  return lines.slice(1, -1).map((l) => l.trim())
}

test('renderDot: every step a quoted node with its state, an edge from each step to those that use it, the base on top', () => {
  const states = new Map([['system', 'would hit'], ['node-deps', 'would run "now"\\'], ['test', 'would run']])
  const dot = renderDot(pipeline(DIAMOND), states)
  const statements = dotStatements(dot)
  assert.ok(statements.includes('"system" [label="system\\nwould hit", fillcolor="#c8e6c9"];'), dot)
  // Quotes and backslashes in a label are escaped; a step without a state is its name alone.
  assert.ok(statements.includes('"node-deps" [label="node-deps\\nwould run \\"now\\"\\\\", fillcolor="#ffe0b2"];'), dot)
  assert.ok(statements.includes('"py-deps" [label="py-deps"];'), dot)
  const edges = statements.filter((s) => s.includes(' -> '))
  assert.deepEqual(edges, ['"(base)" -> "system";', '"system" -> "node-deps";', '"system" -> "py-deps";', '"node-deps" -> "test";', '"py-deps" -> "test";'])
  // Graphviz reads it, when it is installed.
  const r = spawnSync('dot', ['-Tsvg'], { input: dot, encoding: 'utf8' })
  if (r.error === undefined) {
    assert.equal(r.status, 0, r.stderr)
    assert.match(r.stdout, /<svg/)
    // SVG writes "-" as &#45;.
    for (const name of ['system', 'node&#45;deps', 'py&#45;deps', 'test']) assert.match(r.stdout, new RegExp(`<title>${name}</title>`))
    assert.match(r.stdout, /<title>system&#45;&gt;node&#45;deps<\/title>/)
  }
})
