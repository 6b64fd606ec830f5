// The periodic jobs: when each was last enqueued, and its last runs.

import { api } from '../api.js';
import { h, clear, badge, table, time, duration, between, section } from '../dom.js';
import { watch } from '../live.js';

const ABOUT = {
  pull: 'Pulls the runtime state of stable resources from their backends.',
  sweep: 'Finds resources stranded in a transitional state and ends them.',
  prune: 'Deletes finished operations and history past the retention.',
};

function summary(result) {
  if (!result || typeof result !== 'object') return '';
  return Object.entries(result).map(([k, v]) => `${k} ${typeof v === 'object' ? JSON.stringify(v) : v}`).join(', ');
}

/** /ui/jobs */
export async function jobsPage({ main, signal }) {
  const box = h('div');
  clear(main, h('h1', null, 'Background jobs'), box);
  const load = async () => {
    const jobs = (await api('/jobs', { signal })).items;
    if (!jobs.length) {
      clear(box, h('p', { class: 'empty' }, 'No periodic job has run yet.'));
      return;
    }
    clear(box, jobs.map((job) => {
      const last = job.runs[0];
      return section(job.name,
        h('p', { class: 'muted' }, ABOUT[job.name] || ''),
        h('p', null, 'Last enqueued ', time(job.last_enqueued_at), last ? [' · last run ', badge(last.state), ' ', time(last.finished_at || last.started_at || last.run_at)] : null),
        table(job.runs, [
          { label: 'Run', cell: (r) => time(r.run_at) },
          { label: 'State', cell: (r) => badge(r.state) },
          { label: 'Took', cell: (r) => duration(between(r.started_at, r.finished_at)) },
          { label: 'Attempts', cell: (r) => String(r.attempts) },
          { label: 'Outcome', class: 'wrap', cell: (r) => (r.last_error ? h('span', { class: 'error-text' }, r.last_error) : summary(r.result)) },
        ], { empty: 'No runs yet.', caption: `${job.name} runs` }));
    }));
  };
  await load();
  watch(signal, load, { match: () => false });
}
