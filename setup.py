"""Package build read from `settings.ini`, nbdev 2's single source of metadata."""
from configparser import ConfigParser
from pathlib import Path
import shlex, shutil
import setuptools
from setuptools.command.build_py import build_py

config = ConfigParser(delimiters=['='])
config.read('settings.ini', encoding='utf-8')
cfg = config['DEFAULT']

licenses = {'apache2': ('Apache Software License 2.0', 'OSI Approved :: Apache Software License')}
lic = licenses[cfg['license']]
requirements = shlex.split(cfg.get('requirements', ''))
dev_requirements = shlex.split(cfg.get('dev_requirements', ''))


class build_py_with_data(build_py):
    "Also copy `package_data` (settings.ini) into `<lib>/_data`, keeping relative paths: the notebooks stay the one source."
    def run(self):
        super().run()
        if getattr(self, 'editable_mode', False): return      # an editable install reads them from the checkout
        copies = [p for pattern in shlex.split(cfg.get('package_data', '')) for p in sorted(Path().glob(pattern)) if p.is_file()]
        for src in copies:
            dst = Path(self.build_lib) / cfg['lib_path'] / '_data' / src
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)

setuptools.setup(
    name=cfg['lib_name'],
    version=cfg['version'],
    description=cfg['description'],
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    author=cfg['author'],
    author_email=cfg['author_email'],
    license=lic[0],
    url=cfg['git_url'],
    classifiers=['Programming Language :: Python :: 3.11', 'License :: ' + lic[1],
                 'Intended Audience :: Science/Research'],
    keywords=cfg['keywords'],
    packages=setuptools.find_packages(include=['elvis_nb', 'elvis_nb.*']),
    include_package_data=True,
    install_requires=requirements,
    extras_require={'dev': dev_requirements},
    python_requires='>=' + cfg['min_python'],
    zip_safe=False,
    cmdclass={'build_py': build_py_with_data},
    entry_points={'console_scripts': cfg['console_scripts'].split(),
                  'nbdev': [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"]},
)
